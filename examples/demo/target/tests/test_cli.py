from calc.cli import main


def test_summary(capsys):
    assert main(["1,2,3,4"]) == 0
    out = capsys.readouterr().out
    assert "mean 2.5" in out
    assert "median 2.5" in out


def test_bad_input_exit_code(capsys):
    assert main(["1, nope"]) == 2
    assert "nope" in capsys.readouterr().err
