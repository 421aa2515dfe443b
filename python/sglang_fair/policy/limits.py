"""The one "no limit" count of the code base."""

#: A token, request or chunk count that never binds: far above any real KV pool or batch, yet a
#: plain int (comparisons and arithmetic stay exact; never a float infinity in integer fields).
UNLIMITED = 1 << 62
