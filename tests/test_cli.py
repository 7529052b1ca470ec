"""The human form of the commands, the parser, and what stays cheap."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
from helpers.run import backend_env

from mlbackend import cli


def test_version_and_help_import_neither_tensorflow_nor_numpy():
    code = (
        "import sys\n"
        "from mlbackend.cli import main\n"
        "main(['version'])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['training', '--help'])\n"
        "main(['-m', 'moodlemlbackend.version'])\n"
        "print(sorted({'tensorflow', 'numpy'} & set(sys.modules)))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=backend_env()
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_training_writes_nothing_in_home(trained_as_moodle):
    """Moodle runs the backend as the web server's user: its home is no place
    for files (TensorFlow's legacy Keras would write ~/.keras/keras.json)."""
    r = trained_as_moodle["result"]
    assert r.rc == 0, r.stderr
    assert list(trained_as_moodle["home"].iterdir()) == []
    assert r.stderr == ""  # quiet by default: no progress, no log, off a terminal


def test_prediction_does_not_import_tensorflow(tmp_path, binary_data, run_main):
    model_dir = tmp_path / "m"
    assert run_main("training", binary_data["train"], "--model-dir", model_dir).rc == 0
    code = (
        "import sys, io, contextlib\n"
        "from mlbackend.cli import main\n"
        f"rc = main(['prediction', {binary_data['predict']!r}, "
        f"'--model-dir', {str(model_dir)!r}])\n"
        "print('TF' if 'tensorflow' in sys.modules else 'no TF', rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=backend_env()
    )
    assert p.stdout.strip().splitlines()[-1] == "no TF 0", p.stderr


def test_human_form_defaults_to_the_user_data_directory(
    tmp_path, binary_data, run_main, monkeypatch
):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_main("training", binary_data["train"], "--model-id", "dropout risk!").rc == 0
    stored = tmp_path / "data" / "mlbackend" / "models" / "dropoutrisk" / "classifier"
    assert (stored / "model.npz").is_file()
    cmd = [
        sys.executable,
        "-m",
        "mlbackend",
        "prediction",
        binary_data["predict"],
        "--model-id",
        "dropout risk!",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=backend_env(env))
    assert p.returncode == 0 and len(json.loads(p.stdout)["predictions"]) == 150


def test_in_process_main_matches_the_moodle_form(tmp_path, binary_data, run_main):
    r = run_main("-m", "moodlemlbackend.training", "x", tmp_path, binary_data["train"])
    assert r.rc == 0 and r.json == {"status": 0, "info": []}
    a = run_main("-m", "moodlemlbackend.prediction", "x", tmp_path, binary_data["predict"]).json
    b = run_main("prediction", binary_data["predict"], "--model-dir", tmp_path).json
    assert a == b


def test_usage_errors_are_json(run_main, tmp_path):
    r = run_main("training")
    assert r.rc == 1 and "Wrong arguments" in r.json["info"][0]
    r = run_main("-m", "moodlemlbackend.nonsense", "a")
    assert r.rc == 1 and "Unknown module" in r.json["info"][0]
    r = run_main("evaluation", "d.csv", "--iterations", "0", "--model-dir", tmp_path)
    assert r.rc == 1 and "from 1 to 100" in r.json["info"][0]


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--iterations", "101", "from 1 to 100"),
        ("--iterations", "1000000", "from 1 to 100"),
        ("--min-score", "nan", "minimum score must be a finite number"),
        ("--max-deviation", "inf", "accepted deviation must be a finite number"),
        ("--min-score", "-inf", "minimum score must be a finite number"),
    ],
)
def test_absurd_evaluation_settings_are_refused_before_it_runs(
    run_main, tmp_path, binary_data, option, value, message
):
    """Refused before the dataset is read or anything trains: no log directory."""
    r = run_main("evaluation", binary_data["train"], "--model-dir", tmp_path, f"{option}={value}")
    assert r.rc == 1 and message in r.json["info"][0], r.json
    assert "Unexpected" not in r.stdout and not (tmp_path / "logs").exists()
    if option != "--iterations":  # Moodle's argv: MINSCORE and MAXDEVIATION, positional
        args = ["0.7", value] if option == "--max-deviation" else [value, "0.05"]
        r = run_main(
            "-m", "moodlemlbackend.evaluation", "m", tmp_path, binary_data["train"], *args, "10"
        )
        assert r.rc == 1 and message in r.json["info"][0], r.json


def test_unexpected_errors_become_a_json_answer(run_main, monkeypatch, tmp_path):
    from mlbackend import actions

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(actions, "predict", boom)
    r = run_main("prediction", "x.csv", "--model-dir", tmp_path)
    assert r.rc == 1
    assert r.json["info"] == [
        "Unexpected error (RuntimeError: disk on fire). See the log on stderr."
    ]
    assert "Traceback" in r.stderr


def test_every_option_has_help():
    parser = cli.build_parser()
    for name, sub in parser.commands.items():
        for action in sub.options():
            assert action.help, f"{name} {action.option_strings or action.dest} lacks help"


def test_the_parser_adapter_sees_what_was_declared():
    """`Parser.commands` and `Parser.options` read what argparse keeps
    privately: an argparse that keeps it otherwise fails here."""
    parser = cli.build_parser()
    assert list(parser.commands) == [
        "training",
        "prediction",
        "evaluation",
        "export",
        "import",
        "version",
        "serve",
        "passwd",
    ]
    for name, sub in parser.commands.items():
        args = parser.parse_args([name, *_required(name)])
        assert args.command == name and args.handler is sub.get_default("handler")
    serve = [a.dest for a in parser.commands["serve"].options()]
    assert serve == [
        "host",
        "port",
        "workers",
        "max_trainings",
        "max_upload_mb",
        "max_unzipped_mb",
        "max_connections",
        "header_timeout",
        "s3_endpoint_url",
        "s3_connect_timeout",
        "s3_read_timeout",
        "s3_deadline",
        "s3_max_waiting",
        "trusted_proxy",
    ]
    assert [a.dest for a in parser.commands["export"].options()] == [
        "export_dir",
        "model_id",
        "model_dir",
    ]


def _required(command: str) -> list[str]:
    """Arguments that make `command` parse."""
    return {
        "training": ["d"],
        "prediction": ["d"],
        "evaluation": ["d"],
        "export": ["e"],
        "import": ["i"],
        "passwd": ["u"],
    }.get(command, [])


def test_server_options_default_to_the_server_configuration():
    """Written once: `serve`'s defaults are ServerConfig's."""
    from mlbackend.server.config import ServerConfig

    args = cli.build_parser().parse_args(["serve"])
    config = ServerConfig.from_args(args, environ={"MOODLE_MLBACKEND_PYTHON_DIR": "/x"})
    assert config == ServerConfig(storage_dir="/x")


@pytest.mark.parametrize(
    "options, words",
    [
        (["--s3-read-timeout", "0"], "--s3-read-timeout must be more than 0"),
        (["--s3-connect-timeout", "-1"], "--s3-connect-timeout must be more than 0"),
        (["--s3-deadline", "14"], "room for one whole attempt"),
        (["--s3-max-waiting", "8"], "below --workers"),
        (["--s3-max-waiting", "0"], "below --workers"),
    ],
)
def test_s3_bounds_that_cannot_work_are_refused(options, words):
    from mlbackend.server.config import ServerConfig

    args = cli.build_parser().parse_args(["serve", *options])
    with pytest.raises(cli.BackendError, match=words):
        ServerConfig.from_args(args, environ={"MOODLE_MLBACKEND_PYTHON_DIR": "/x"})


def test_s3_limits_default_from_the_workers():
    from mlbackend.server.config import ServerConfig

    limits = ServerConfig(workers=8).s3_limits()
    assert (limits.connect_timeout, limits.read_timeout, limits.deadline) == (5, 10, 30)
    assert (limits.max_waiting, limits.per_key, limits.retry_after) == (6, 3, 30)
    assert ServerConfig(workers=2).s3_limits().max_waiting == 1


def test_progress_on_a_terminal_only(tmp_path, binary_data):
    """Progress on stderr at a terminal (off one, stderr stays empty:
    test_training_writes_nothing_in_home)."""
    cmd = ["-m", "moodlemlbackend.training", "t", str(tmp_path / "t"), binary_data["train"]]
    shown, out, rc = _run_at_terminal(cmd, terminal="stderr")
    assert rc == 0
    assert "epoch" in shown
    assert json.loads(out.strip().splitlines()[-1]) == {"status": 0, "info": []}


@pytest.mark.parametrize("argv", [["-m"], ["-m", "moodlemlbackend.training"]])
def test_degenerate_moodle_argv(run_main, argv):
    r = run_main(*argv)
    assert r.rc == 1 and r.json["status"] == 1


def test_every_moodle_argv_maps_onto_its_subcommands_options():
    """Moodle's positional arguments, declared with each subcommand, land on
    the options the human form documents, in Moodle's order."""
    parser = cli.build_parser()
    modules = cli.moodle_modules(parser)
    assert set(modules) == {"training", "prediction", "evaluation", "export", "import", "version"}
    for module, sub in modules.items():
        names = sub.get_default("moodle_args") + sub.get_default("moodle_optional")
        values = [
            f"v{i}" if not n.endswith(("score", "deviation", "iterations")) else str(i)
            for i, n in enumerate(names)
        ]
        args = parser.parse_args(
            cli.moodle_argv(["-m", f"moodlemlbackend.{module}", *values], parser)
        )
        assert args.command == module and args.handler is sub.get_default("handler")
        for name, value in zip(names, values):
            dest = name.lstrip("-").replace("-", "_").lower()
            dest = {"dataset": "dataset", "exportdir": "export_dir", "importdir": "import_dir"}.get(
                dest, dest
            )
            got = getattr(args, dest)
            assert str(got) == value or got == type(got)(value), (module, name, got)


def _run_at_terminal(argv: list[str], terminal: str = "stdout") -> tuple[str, str, int]:
    """Run the program with `terminal` ("stdout" or "stderr") on a
    pseudo-terminal; returns what the terminal showed, the other stream's
    text, and the exit status."""
    master, slave = pty.openpty()
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, terminal: slave}
    p = subprocess.Popen(
        [sys.executable, "-m", "mlbackend", *argv],
        env=backend_env(),
        stdin=subprocess.DEVNULL,
        **streams,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the program closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, err = p.communicate()
    os.close(master)
    other = (err if terminal == "stdout" else out).decode()
    return b"".join(chunks).decode().replace("\r\n", "\n"), other, p.returncode


def test_a_person_at_a_terminal_reads_a_summary_moodle_reads_json(tmp_path, binary_data, run_main):
    model = str(tmp_path / "m")
    assert run_main("training", binary_data["train"], "--model-dir", model).rc == 0
    shown, _, _ = _run_at_terminal(["prediction", binary_data["predict"], "--model-dir", model])
    assert shown.startswith("Prediction: ok\n")
    assert "sample" in shown and "probability" in shown and "more rows" in shown
    with pytest.raises(json.JSONDecodeError):
        json.loads(shown)
    # --json at a terminal, and no terminal (Moodle): the one JSON line.
    argv = ["prediction", binary_data["predict"], "--model-dir", model]
    shown, _, _ = _run_at_terminal([*argv, "--json"])
    assert len(json.loads(shown.strip())["predictions"]) == 150
    assert len(run_main(*argv).json["predictions"]) == 150


def test_evaluation_summary_and_errors_read_as_text():
    from mlbackend.summary import format_answer

    answer = {
        "status": 4,
        "info": ["The score is too low."],
        "runid": 1,
        "accuracy": 0.9,
        "balanced accuracy": 0.8,
        "precision": 0.9,
        "recall": 0.9,
        "f1_score": 0.6,
        "score": 0.6,
        "score_deviation": 0.01,
        "auc": 0.95,
        "auc_deviation": 0.02,
        "min_score": 0.7,
        "accepted_deviation": 0.05,
        "dir": "/x/logs/1",
    }
    text = format_answer("evaluation", answer, as_json=False)
    assert text.splitlines()[0] == "Evaluation: score too low (status 4)"
    assert "AUC                0.950 ± 0.020" in text and "The score is too low." in text
    assert (
        format_answer(None, {"status": 1, "info": ["Bad file."]}, as_json=False)
        == "Mlbackend: error (status 1)\n  Bad file."
    )
    assert json.loads(format_answer("evaluation", answer, as_json=True)) == answer


@pytest.mark.parametrize(
    "argv,env,message",
    [
        (["--port", "70000"], {}, "is not a TCP port"),
        (["--workers", "0"], {}, "--workers must be at least 1"),
        (["--no-such-option"], {}, "Wrong arguments"),
        ([], {"MOODLE_MLBACKEND_PYTHON_USERS": ""}, "no users"),
        ([], {"MOODLE_MLBACKEND_PYTHON_USERS": "moodle"}, "is not user:password"),
        ([], {"MOODLE_MLBACKEND_PYTHON_DIR": "{file}/models"}, "cannot be made"),
    ],
)
def test_serve_configuration_errors_exit_78(run_main, monkeypatch, tmp_path, argv, env, message):
    """EX_CONFIG, for systemd's RestartPreventExitStatus=: a service whose
    settings are wrong fails, instead of being restarted for ever; the answer
    is printed as for any error."""
    from mlbackend.server import wsgi

    monkeypatch.setattr(wsgi, "_configure_logging", lambda: None)  # global handlers
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MOODLE_MLBACKEND_PYTHON_USERS", "moodle:pw")
    monkeypatch.setenv("MOODLE_MLBACKEND_PYTHON_DIR", str(tmp_path / "models"))
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(file=tmp_path / "file"))
    r = run_main("serve", "--port", "0", *argv)
    assert r.rc == 78, r.stdout
    assert r.json["status"] == 78 and message in r.json["info"][0], r.json


def test_passwd_without_a_terminal_points_to_stdin(run_main, monkeypatch):
    """ssh or `podman exec` without -t: no traceback, a sentence saying what to do."""
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    r = run_main("passwd", "moodle")
    assert r.rc == 1 and "Unexpected" not in r.stdout and "Traceback" not in r.stderr
    assert "no terminal" in r.json["info"][0] and "--stdin" in r.json["info"][0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    r = run_main("passwd", "moodle", "--stdin", "--iterations", "10000")
    assert r.rc == 0 and r.stdout.startswith("moodle:pbkdf2_sha256:10000:")


def test_passwd_at_a_terminal_asks_twice(run_main, monkeypatch):
    import getpass
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked = []
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    monkeypatch.setattr(getpass, "getpass", lambda prompt: asked.append(prompt) or "s3cret")
    r = run_main("passwd", "moodle", "--iterations", "10000")
    assert r.rc == 0 and r.stdout.startswith("moodle:pbkdf2_sha256:10000:")
    assert asked == ["password for moodle: ", "password for moodle again: "]
