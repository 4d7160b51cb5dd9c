"""Where an input the user names lives: ``sample:NAME`` is a shipped sample checkpoint, anything else a path that
must exist, be a file and not be empty (checked here, before any work, with one-line errors)."""

from __future__ import annotations

from pathlib import Path

from nc_probe.core.errors import InputError

SAMPLE_PREFIX = "sample:"


def resolve_input(path) -> Path:
    """The file behind an input: ``sample:ce`` -> the shipped checkpoint, anything else as given (checked)."""
    text = str(path)
    p = Path(text)
    if text.startswith(SAMPLE_PREFIX) and not p.exists():
        from nc_probe.load import samples

        try:
            return samples.sample_path(text)
        except FileNotFoundError:
            names = ", ".join(f"sample:{n}" for n in samples.sample_names()) or "none (reinstall nc-probe)"
            raise InputError(f"{text} is not a shipped sample", fix=f"pick one of {names}") from None
    if not p.exists():
        raise InputError("no such file", path=p, fix="check the path (or name a shipped sample, e.g. sample:ce)")
    if p.is_dir():
        from nc_probe.load.hf import is_hf_folder

        if is_hf_folder(p):
            return p
        raise InputError("is a folder", path=p, fix="pass a checkpoint, a Hugging Face save_pretrained folder, a "
                                                    "feature file or a report JSON")
    if not p.is_file():  # a pipe or a device: reading it could block forever
        raise InputError("is not a regular file (a pipe or a device)", path=p,
                         fix="pass a checkpoint, a feature file or a report JSON saved on disk")
    if p.stat().st_size == 0:
        raise InputError("file is empty", path=p, fix="save the checkpoint, feature file or report again")
    return p


def input_label(path) -> str:
    """A short label for an input: the file stem, or the sample's name."""
    text = str(path)
    return text[len(SAMPLE_PREFIX):] if text.startswith(SAMPLE_PREFIX) else Path(text).stem
