"""The `melvin` command line: demo (the README's main job), stats and generate on a saved brain."""
import melvin
from melvin.__main__ import main


def test_demo_trains_and_reports(capsys, tmp_path):
    brain = tmp_path / "demo.mlv"
    assert main(["demo", "--save", str(brain)]) == 0
    out = capsys.readouterr().out
    assert "held-out bits per byte" in out and "nodes" in out
    assert melvin.load(brain).check()


def test_stats_and_generate(capsys, tmp_path):
    g = melvin.Graph()
    for _ in range(5):
        g.feed("hello world")
    path = tmp_path / "b.mlv"
    g.save(path)
    assert main(["stats", str(path)]) == 0
    assert '"edges"' in capsys.readouterr().out
    assert main(["generate", str(path), "hello"]) == 0
    assert capsys.readouterr().out == " world\n"


def test_missing_brain_is_a_clear_error(capsys, tmp_path):
    assert main(["stats", str(tmp_path / "nope.mlv")]) == 1
    assert "melvin: error" in capsys.readouterr().err
