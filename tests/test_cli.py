"""The `melvin` command line: demo (the README's main job), stats, generate and convert on a saved
brain."""
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


def test_convert_between_formats(capsys, tmp_path):
    g = melvin.Graph()
    for _ in range(5):
        g.feed("hello world")
    path, mapped, back = tmp_path / "b.mlv", tmp_path / "m.mlv", tmp_path / "c.mlv"
    g.save(path)
    assert main(["convert", str(path), str(mapped), "--mapped"]) == 0
    assert mapped.read_bytes()[8] == 4                    # format 4
    assert main(["generate", str(mapped), "hello"]) == 0
    assert capsys.readouterr().out == " world\n"
    assert main(["convert", str(mapped), str(back)]) == 0
    assert back.read_bytes()[8] == 3 and melvin.load(back).generate(b"hello") == b" world"
    assert main(["convert", str(tmp_path / "nope.mlv"), str(back)]) == 1
    assert "melvin: error" in capsys.readouterr().err
