"""The pictures: real PNGs, drawn without pyplot's global state (a driver draws while a warm-up thread
imports matplotlib; the sweep in CI once died on that race)."""

import subprocess
import sys
import textwrap

DRAW_WHILE_ANOTHER_THREAD_IMPORTS = textwrap.dedent("""
    import sys, threading
    from atoll import exports, plots

    exports.warm_up()  # imports matplotlib's modules in a daemon thread, as a sweep's driver does
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1),
                "train_accuracy": e / 4, "val_accuracy": e / 5} for e in range(4)]
    out = sys.argv[1]
    plots.training_curve(history, out + "/curve.png", title="t")
    plots.sweep_curves({"a": history, "b": history[:2]}, "val_accuracy", out + "/sweep.png")
    print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
""")


def test_pictures_are_pngs_drawn_without_pyplot_while_a_warm_up_thread_imports(tmp_path):
    done = subprocess.run([sys.executable, "-c", DRAW_WHILE_ANOTHER_THREAD_IMPORTS, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["no", "pyplot"]
    for name in ("curve.png", "sweep.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
