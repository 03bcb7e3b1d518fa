"""Every command refuses bad arguments before any training: one line ``error: ...``, exit status 2."""
import os

import pytest

from compare.__main__ import main as compare_main
from flowar.__main__ import main as flowar_main
from var.__main__ import main as var_main

SMALL = ["--width", "32", "--depth", "1", "--heads", "2", "--side", "8", "--latent-channels", "4"]
CASES = [
    (var_main, ["--cfg-scale", "-1"], "error: --cfg-scale must be >= 0.0, got -1.0"),
    (var_main, ["--top-k", "0"], "error: --top-k must be >= 1, got 0"),
    (var_main, ["--temperature", "0"], "error: temperature must lie in [0.0001, inf), got 0.0"),
    (var_main, ["--temperature", "1e-45"], "error: temperature must lie in [0.0001, inf), got 1e-45"),
    (var_main, ["--cfg-scale", "inf"], "error: cfg_scale must be a finite number, got inf"),
    (var_main, ["--per-class", str(10**9)], "error: --per-class: needs 2,384.2 GiB of memory"),
    (var_main, ["--seed", str(10**15)], "error: seed must lie in [0, 2147483647], got 1000000000000000"),
    (var_main, ["--per-class", "0"], "error: --per-class must be >= 1, got 0"),
    (var_main, ["--per-class", "-1"], "error: --per-class must be >= 1, got -1"),
    (var_main, ["--steps", "0"], "error: --steps must be >= 1, got 0"),
    (var_main, ["--top-p", "1.5"], "error: top_p must lie in (0, 1], got 1.5"),
    (var_main, ["--seed", "-1"], "error: seed must lie in [0, 2147483647], got -1"),
    (flowar_main, ["--sample-steps", "0"], "error: --sample-steps must be >= 1, got 0"),
    (flowar_main, ["--steps", "0"], "error: --steps must be >= 1, got 0"),
    (flowar_main, ["--data", "missing.npz"], "error: cannot read npz file missing.npz"),
    (flowar_main, ["--solver", "shortcut"], "error: --solver shortcut needs a few-step head: add --few-step shortcut"),
    (flowar_main, ["--sample-steps", "100000000"], "error: steps must lie in [1, 10000], got 100000000"),
    (flowar_main, ["--cfg-scale", "nan"], "error: cfg_scale must be a finite number, got nan"),
    (flowar_main, ["--cfg-scale", "inf"], "error: cfg_scale must be a finite number, got inf"),
    (compare_main, ["--samples", "1"], "error: samples must lie in [4, inf), got 1"),
    (compare_main, ["--samples", "3"], "error: samples must lie in [4, inf), got 3"),
    (compare_main, ["--samples", str(10**9)], "error: samples: needs 953.7 GiB of memory"),
    (compare_main, ["--side", "4096"], "error: side: needs 224.6 GiB of memory"),
    (compare_main, ["--seeds", "0"], "error: seeds must lie in [1, 2147483648], got 0"),
    (compare_main, ["--seed", str(10**15)], "error: seed must lie in [0, 2147483647], got 1000000000000000"),
    (compare_main, ["--seed", str(2**31 - 1), "--seeds", "2"], "error: seeds must lie in [1, 1], got 2"),
    (compare_main, ["--design", "attribution", "--arms", "var"], "error: give --arms or --design, not both"),
    (compare_main, ["--train-steps", "0"], "error: --train-steps must be >= 1, got 0"),
    (compare_main, ["--steps", "5"], "error: --steps is now --train-steps"),  # renamed; a prefix of it too
    (compare_main, ["--step", "5"], "error: --steps is now --train-steps"),
]
# every command and every bad device string: one line naming what this machine has
CASES += [(m, ["--device", d], "error: device must be cpu") for m in (var_main, flowar_main, compare_main)
          for d in ("gpu", "", "foo", "meta", "mps", "cuda:99")]


import torch  # noqa: E402

if not torch.cuda.is_available():
    CASES += [(m, ["--device", "cuda"], "error: device must be cpu on this machine, got 'cuda'")
              for m in (var_main, flowar_main, compare_main)]


@pytest.mark.parametrize("main,argv,msg", CASES)
def test_bad_arguments_fail_fast_with_one_line(tmp_path, capsys, main, argv, msg):
    out = tmp_path / "run"
    extra = SMALL if main is not compare_main else ["--quick"]
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), *extra, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(msg), err
    assert not (out / "checkpoints").exists()  # nothing was trained


@pytest.mark.parametrize("main", [var_main, flowar_main, compare_main])
def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys, main):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(f), *(SMALL if main is not compare_main else ["--quick"])])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == f"error: --out {f} is a file, not a folder"


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    """Two processes: one holds the run lock of --out (as a running command does); the command started
    beside it stops at once with one error line naming the holder; once the holder dies (killed, never
    releasing) the kernel frees the lock and a rerun takes it, whatever pid it has (in a container every
    rerun is pid 1 again); a lock path that is a folder is a clear error."""
    import socket
    import subprocess
    import sys

    from nextscale.cli import out_lock

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from nextscale.cli import out_lock\n"
        f"with out_lock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as e:
            var_main(["--out", str(out), *SMALL])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err == (f"error: another run (host {socket.gethostname()}, pid {holder.pid}) "
                                             f"is writing to {out}; wait for it or use another --out")
    finally:
        holder.kill()
        holder.wait()
    # killed without releasing: the file still names it, but the kernel freed the lock
    assert (out / ".lock").read_text().endswith(f"pid {holder.pid}")
    with out_lock(out):
        assert (out / ".lock").read_text().endswith(f"pid {os.getpid()}")
        with pytest.raises(ValueError, match="another run"):  # our own pid holds it: still refused
            with out_lock(out):
                pass
    with out_lock(out):  # released at the end of a run
        pass
    (out / ".lock").write_text(str(os.getpid()))  # left by a killed run that had our pid (a container's pid 1)
    with out_lock(out):
        pass
    folder = tmp_path / "odd"
    (folder / ".lock").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a folder, not the run's lock file"):
        with out_lock(folder):
            pass


def test_ctrl_c_prints_one_line_saying_a_rerun_resumes(capsys):
    from nextscale.cli import run_or_exit

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        run_or_exit(interrupted)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and len(err) == 1 and err[0].startswith("interrupted: the same command resumes")


def test_the_environment_cannot_fail_a_finished_run(tmp_path):
    """LC_ALL=C, PYTHONIOENCODING=ascii and MPLBACKEND=garbage: a command still prints its ± (escaped),
    writes its report in UTF-8 and draws its plots (each failed at a run's end before)."""
    import os
    import subprocess
    import sys
    script = ("import sys\nfrom pathlib import Path\nfrom nextscale.cli import run_or_exit\n"
              "from nextscale.checkpoint import write_text\n"
              "def job(out):\n"
              "    print('FID 1.91 ± 0.28')\n"
              "    write_text(Path(out) / 'report.md', 'FID 1.91 ± 0.28')\n"
              "    import matplotlib.pyplot as plt\n"
              "    plt.plot([0, 1]); plt.savefig(Path(out) / 'p.png')\n"
              f"run_or_exit(job, {str(tmp_path)!r})\n")
    env = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii", "MPLBACKEND": "garbage"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"FID 1.91 \\xb1 0.28\n"
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "FID 1.91 ± 0.28"
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
