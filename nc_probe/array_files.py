"""Named arrays from ``.npz`` (never unpickled) and ``.pt`` (``torch.load(weights_only=True)``) files, with one-line
errors; shared by feature files and data files."""

from __future__ import annotations

import zipfile

import numpy as np

from .errors import InputError


def read_array_file(path, example: str = "{'H': H, 'y': y}") -> dict:
    """The named arrays of a ``.npz`` (no pickles) or ``.pt`` (``torch.load(weights_only=True)``) file, with one-line
    InputErrors for pickled, truncated or non-dict contents. ``example`` shows the expected dict in the fix."""
    path = str(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            reason = "holds pickled objects" if "pickle" in str(e) else "is truncated or corrupt"
            raise InputError(f"the .npz archive {reason}", path=path, fix="save plain numeric arrays with np.savez") \
                from None
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError("holds Python objects that weights_only loading refuses", path=path,
                         fix=f"save a dict of tensors, e.g. torch.save({example}, path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise InputError(f"is truncated or not a torch.save file ({type(e).__name__})", path=path,
                         fix="save it again") from None
    if not isinstance(obj, dict):
        raise InputError(f"holds a {type(obj).__name__}, not a dict of arrays", path=path,
                         fix=f"save a dict of tensors, e.g. torch.save({example}, path)")
    return obj
