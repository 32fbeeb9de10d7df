"""The folder of generated kernel modules is safe to share: threads and processes loading the
same new module at once, a truncated file left by a crash, and no writable folder at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from nbconv.cpu import _generated

SOURCE = _generated.HEADER.format(generator="tests", version="0", what="a cache test") + textwrap.dedent('''

    @njit_serial
    def twice(x):
        return 2 * x
    ''') + "\n# padding so that a write is not one syscall\n" * 2000


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(_generated, "source_dir", lambda: str(tmp_path))
    return tmp_path


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_threads_load_one_new_module_at_once(folder):
    """Each round a new module, loaded by 8 threads released together."""
    rounds, n_threads = 20, 8
    barrier = threading.Barrier(n_threads)
    errors, modules = [], []

    def worker():
        for r in range(rounds):
            barrier.wait()
            try:
                modules.append(_generated.load.__wrapped__(SOURCE + f"# round {r}\n", "nbconv_cache_test"))
            except Exception as exc:  # noqa: BLE001 (any failure is the finding)
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(modules) == rounds * n_threads and all(m.twice.py_func(3) == 6 for m in modules)
    files = _files(folder)  # one file a round, whole, and no temporary file left behind
    assert len(files) == rounds and all(f.endswith(".py") for f in files)
    assert sorted((folder / f).read_text() for f in files) == sorted(SOURCE + f"# round {r}\n" for r in range(rounds))


def test_a_truncated_file_is_written_again(folder):
    first = _generated.load.__wrapped__(SOURCE, "nbconv_cache_test")
    path = folder / (first.__name__ + ".py")
    path.write_text(SOURCE[: len(SOURCE) // 3])
    again = _generated.load.__wrapped__(SOURCE, "nbconv_cache_test")
    assert again.twice.py_func(4) == 8 and path.read_text() == SOURCE
    stamp = path.stat().st_mtime_ns
    _generated.load.__wrapped__(SOURCE, "nbconv_cache_test")
    assert path.stat().st_mtime_ns == stamp  # a good file is not rewritten


def test_processes_load_one_new_module_at_once(tmp_path):
    code = ("import sys; from nbconv.cpu import _generated; "
            "m = _generated.load(sys.stdin.read(), 'nbconv_cache_test'); assert m.twice.py_func(5) == 10")
    env = dict(os.environ, NBCONV_CACHE_DIR=str(tmp_path))
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(3)]
    for run in runs:
        run.stdin.write(SOURCE)
        run.stdin.close()
    results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    assert all(rc == 0 for rc, _ in results), results
    (name,) = _files(tmp_path)
    assert (tmp_path / name).read_text() == SOURCE


def test_no_writable_folder_warns_once_and_leaves_nothing_behind(tmp_path):
    """Every candidate folder lies under a regular file (so none can be made, even as root): the
    modules go to a temporary folder, with one warning, and that folder is gone at exit."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR",)}
    env.update(NBCONV_CACHE_DIR=str(blocker / "x"), XDG_CACHE_HOME=str(blocker / "y"), HOME=str(blocker / "z"),
               TMPDIR=str(scratch))
    code = ("import warnings, sys; warnings.simplefilter('always'); from nbconv.cpu import _generated; "
            "m = _generated.load(sys.stdin.read(), 'nbconv_cache_test'); assert m.twice.py_func(1) == 2; "
            "_generated.load.__wrapped__(_generated.HEADER, 'nbconv_cache_test2')")
    run = subprocess.run([sys.executable, "-c", code], env=env, input=SOURCE, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("no writable cache folder") == 1, run.stderr
    assert list(scratch.iterdir()) == []


def test_a_read_only_install_computes_without_a_disk_cache(tmp_path):
    """nbconv imported from a folder where no ``__pycache__`` can be made (one is a regular file
    in every package folder: a stand-in for a read-only install that works as root too), with
    the home and cache folders unwritable and no NUMBA_CACHE_DIR: the ops still compute, Numba's
    disk cache is off, and each of the two caches says so once."""
    import shutil

    import nbconv

    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(nbconv.__file__), site / "nbconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for folder in [site / "nbconv", *[p for p in (site / "nbconv").rglob("*") if p.is_dir()]]:
        (folder / "__pycache__").write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NBCONV_CACHE_DIR")}
    env.update(PYTHONPATH=str(site), HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"),
               TMPDIR=str(scratch))
    code = textwrap.dedent("""
        import warnings; warnings.simplefilter("always")
        import numpy as np, nbconv
        from nbconv import _numba_options
        assert nbconv.__file__.startswith(sys.argv[1]) and not _numba_options.CACHE
        x = np.ones((2, 32, 20, 20), np.float32); w = np.ones((32, 1, 3, 3), np.float32)
        assert float(nbconv.conv2d(x, w, padding=1, groups=32)[0, 0, 5, 5]) == 9.0
        """)
    run = subprocess.run([sys.executable, "-c", "import sys\n" + code, str(site)], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("Numba cannot write its on-disk cache") == 1, run.stderr[-3000:]
    assert list(scratch.iterdir()) == []
    assert _numba_options_usable_here()


def _numba_options_usable_here() -> bool:
    from nbconv import _numba_options

    return _numba_options.disk_cache_usable(_numba_options.__file__) and _numba_options.CACHE


def test_cache_info_and_clear_on_the_command_line(folder, monkeypatch, capsys):
    from nbconv import __main__, _numba_options

    compiled = folder / "__pycache__"
    compiled.mkdir()
    monkeypatch.setattr(_numba_options, "disk_cache_folder", lambda py_file: str(compiled))
    (folder / "nbconv_rowblock_0123.py").write_text("x = 1\n")
    (folder / "notes.txt").write_text("not ours")
    for name in ("nbconv_rowblock_0123.forward-10.py311.nbi", "nbconv_rowblock_0123.forward-10.py311.1.nbc"):
        (compiled / name).write_bytes(b"0" * 1000)
    assert __main__.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "1 modules, 2 files of compiled code" in out
    assert __main__.main(["cache", "clear"]) == 0
    assert "deleted 3 files" in capsys.readouterr().out
    assert _files(folder) == ["notes.txt"] and list(compiled.iterdir()) == []


def test_the_source_digest_follows_every_kernel_source(tmp_path):
    """The folder of nbconv's compiled code is named by a digest of every source Numba compiles
    into a kernel: a change to an intrinsic's module (which a cached kernel of another module
    inlines, and which Numba's own key does not see) changes it; other files do not."""
    import shutil

    import nbconv
    from nbconv import _numba_options

    package = tmp_path / "nbconv"
    shutil.copytree(os.path.dirname(nbconv.__file__), package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = _numba_options.source_digest.__wrapped__
    before = digest(str(package))
    assert before == digest(os.path.dirname(nbconv.__file__)) == _numba_options.source_digest()
    with open(package / "_conv.py", "a") as f:  # not compiled into a CPU kernel
        f.write("\n# an edit\n")
    assert digest(str(package)) == before
    for name in ("cpu/_simd.py", "cpu/_outer.py", "_numba_options.py", "_version.py"):
        with open(package / name, "a") as f:
            f.write("\n# an edit\n")
        changed = digest(str(package))
        assert changed != before, name
        before = changed


def test_compiled_code_is_kept_under_the_source_digest(tmp_path):
    """Every function of nbconv that Numba caches, the package's and the generated modules', is
    kept in an ``nbconv-<digest>`` folder; a function of another module is left where Numba
    puts it."""
    from nbconv import _numba_options

    cache = tmp_path / "numba-cache"
    (tmp_path / "elsewhere.py").write_text("import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    env = {k: v for k, v in os.environ.items() if k != "NBCONV_CACHE_DIR"}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(tmp_path) + os.pathsep + env.get("PYTHONPATH", ""))
    code = textwrap.dedent("""
        import numpy as np, nbconv, elsewhere
        x = np.ones((2, 32, 9, 9), np.float32); w = np.ones((32, 8, 3, 3), np.float32)
        assert float(nbconv.conv2d(x, w, padding=1, groups=4)[0, 0, 4, 4]) == 72.0
        assert elsewhere.f(1) == 2
        """)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    index = list(cache.rglob("*.nbi"))
    ours = [p for p in index if p.name.startswith(("nbconv_", "_")) or "nbconv" in p.parent.parent.name]
    others = [p for p in index if p.name.startswith("elsewhere.")]
    assert ours and others and len(ours) + len(others) == len(index)
    assert {p.parent.name for p in ours} == {"nbconv-" + _numba_options.source_digest()}
    assert any(p.name.startswith("nbconv_outer_") for p in ours)  # a generated module's
    assert not others[0].parent.name.startswith("nbconv-")


def test_cache_clear_takes_the_code_of_earlier_sources(folder, monkeypatch):
    """``nbconv cache clear`` deletes the compiled code of the generated modules kept under the
    digests of earlier sources too, and that kept before there were digests."""
    from nbconv import _numba_options

    compiled = folder / "__pycache__" / "nbconv-0123456789abcdef"
    old = folder / "__pycache__" / "nbconv-fedcba9876543210"
    compiled.mkdir(parents=True)
    old.mkdir()
    monkeypatch.setattr(_numba_options, "disk_cache_folder", lambda py_file: str(compiled))
    (folder / "nbconv_outer_0123.py").write_text("x = 1\n")
    (compiled / "nbconv_outer_0123.forward-10.py311.nbi").write_bytes(b"0")
    (old / "nbconv_outer_0123.forward-10.py311.nbi").write_bytes(b"0")
    (old / "nbconv_outer_0123.forward-10.py311.1.nbc").write_bytes(b"0")
    (folder / "__pycache__" / "nbconv_outer_0123.forward-10.py311.nbi").write_bytes(b"0")  # before digests
    assert len(_generated.cache_files()) == 5
    assert _generated.clear_cache() == 5
    assert list(compiled.iterdir()) == list(old.iterdir()) == []
    assert sorted(p.name for p in (folder / "__pycache__").iterdir()) == [compiled.name, old.name]


def test_cache_clear_takes_the_package_code_of_earlier_sources(tmp_path, monkeypatch, capsys):
    """Numba's code of the package's own kernels from earlier sources (other digests' folders, and
    the files kept before digests) is reported by ``nbconv cache info`` and deleted by ``clear``;
    the current sources' code and the bytecode beside it are kept."""
    from nbconv import __main__, _numba_options

    package = tmp_path / "nbconv"
    (package / "cpu").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cpu" / "_kernel.py").write_text("x = 1\n")
    current = "nbconv-" + _numba_options.source_digest(str(package))
    monkeypatch.setattr(_numba_options, "disk_cache_folder",
                        lambda py_file: os.path.join(os.path.dirname(py_file), "__pycache__", current))
    real = _numba_options._stale_package_caches
    monkeypatch.setattr(_numba_options, "_stale_package_caches", lambda package_=None: real(str(package)))
    kept, stale = [], []
    for folder in (package / "__pycache__", package / "cpu" / "__pycache__"):
        (folder / current).mkdir(parents=True)
        (folder / "nbconv-0123456789abcdef").mkdir()  # an earlier digest's, empty
        kept += [folder / current / "_kernel.f-3.py311.nbi", folder / "_kernel.cpython-311.pyc"]
        stale += [folder / "_kernel.f-3.py311.nbi", folder / "_kernel.f-3.py311.1.nbc"]
    old = package / "cpu" / "__pycache__" / "nbconv-fedcba9876543210"
    old.mkdir()
    stale += [old / "_kernel.f-3.py311.nbi", old / "_kernel.f-3.py311.1.nbc"]
    for path in kept + stale:
        path.write_bytes(b"0" * 1000)
    assert sorted(_numba_options.stale_package_code()) == sorted(map(str, stale))
    assert __main__.main(["cache", "info"]) == 0
    assert "6 files (0.0 MiB) of compiled code from earlier versions" in capsys.readouterr().out
    monkeypatch.setattr(_generated, "source_dir", lambda: str(tmp_path / "generated"))
    (tmp_path / "generated").mkdir()
    assert __main__.main(["cache", "clear"]) == 0
    assert "deleted 6 files of compiled code from earlier versions" in capsys.readouterr().out
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert sorted(p.name for p in (package / "cpu" / "__pycache__").iterdir()) == ["_kernel.cpython-311.pyc", current]
    assert _numba_options.stale_package_code() == []
