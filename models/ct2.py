"""Reader for CTranslate2's model.bin (format version 6).

Layout (little endian): u32 version, u16-length name, u32 revision,
u32 variable count; per variable: u16-length name, u8 rank, u32 dims,
u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16), u32 byte count, data; then a
u32 alias count and (alias, target) string pairs. Strings may end in NUL.
"""
import struct

import numpy as np

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return vals if len(vals) > 1 else vals[0]

    def string(self):
        n = self.take("H")
        s = self.data[self.pos:self.pos + n].decode("utf-8").rstrip("\0")
        self.pos += n
        return s


def load(path):
    """Return (spec name, {variable name: numpy array}), aliases resolved."""
    with open(path, "rb") as f:
        r = Reader(f.read())
    version = r.take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 format version {version}, expected 6")
    spec = r.string()
    r.take("I")  # revision
    count = r.take("I")
    variables = {}
    for _ in range(count):
        name = r.string()
        rank = r.take("B")
        dims = [r.take("I") for _ in range(rank)]
        dtype = DTYPES[r.take("B")]
        nbytes = r.take("I")
        arr = np.frombuffer(r.data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=r.pos)
        r.pos += nbytes
        variables[name] = arr.reshape(dims)
    if r.pos < len(r.data):
        for _ in range(r.take("I")):
            alias, target = r.string(), r.string()
            variables[alias] = variables[target]
    return spec, variables
