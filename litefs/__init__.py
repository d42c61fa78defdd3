"""litefs: a FUSE file system that replicates SQLite databases as LTX files.

Dependencies point one way: cli -> (fuse, http, archive, lease) -> db -> ltx -> the compiled
kernels loaded by litefs.native.
"""
__version__ = "0.1.0"
