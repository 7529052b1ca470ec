"""The command line: the parser (declared once), Moodle's argv, and the one
place that turns errors into the contract's JSON and exit codes.

Two spellings reach the same parser and the same `mlbackend.actions`:

- Moodle's: `mlbackend -m moodlemlbackend.MODULE ARG...` with positional
  arguments, exactly as `mlbackend_python` runs a Python interpreter. It is
  rewritten into the human form below before parsing.
- The human form: `mlbackend training DATASET --model-id ID [--model-dir DIR]`.
  Without `--model-dir` the model lives under the user data directory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from mlbackend import VERSION_OVERRIDE_ENV, reported_version
from mlbackend.contract import CONFIG_ERROR, GENERAL_ERROR, BackendError, to_json_line
from mlbackend.summary import format_answer

log = logging.getLogger("mlbackend")

#: A command's handler: parsed arguments in, the answer out (a dict is the
#: contract's JSON, a str is printed as it is, None prints nothing).
Handler = Callable[[argparse.Namespace], dict[str, Any] | str | None]


class UsageError(BackendError):
    """A wrong command line; answered like any other error, with status 1."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, answering a wrong command line with the contract's
    JSON, and keeping its subcommands and options where others can read them.

    argparse keeps both in private attributes (`_actions`, the subparsers
    action's `choices`); `options` is the one place that reads them, and
    tests/test_cli.py checks it against what was declared, so that an
    argparse that changes them fails there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The subcommands, by name, as declared (`build_parser`).
        self.commands: dict[str, Parser] = {}

    def error(self, message: str) -> Any:  # argparse would exit 2 with no JSON
        self.print_usage(sys.stderr)
        raise UsageError(f"Wrong arguments for {self.prog}: {message}.")

    def options(self) -> list[argparse.Action]:
        """Every argument declared, in order (options and positionals; not --help)."""
        return [a for a in self._actions if a.dest != "help"]


class _Commands:
    """Declares the subcommands of one parser: each command, its handler and
    the order of Moodle's positional arguments, once."""

    def __init__(self, parser: Parser) -> None:
        self.parser = parser
        self.sub = parser.add_subparsers(
            dest="command", metavar="COMMAND", required=True, parser_class=Parser
        )

    def add(
        self,
        name: str,
        handler: Handler,
        moodle: list[str] | None = None,
        moodle_optional: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> Parser:
        """A subcommand. `moodle`: the option (or positional) each of Moodle's
        positional arguments fills, in order; None when Moodle never calls it."""
        p: Parser = self.sub.add_parser(name, **kwargs)
        p.set_defaults(handler=handler, moodle_args=moodle, moodle_optional=list(moodle_optional))
        self.parser.commands[name] = p
        return p


def build_parser() -> Parser:
    """The whole command line: the program's options, then each command."""
    parser = Parser(
        prog="mlbackend",
        description="Machine-learning backend for Moodle Learning Analytics: trains, "
        "evaluates and runs the classifiers behind Moodle's predictions. Moodle "
        "runs it as `mlbackend -m moodlemlbackend.MODULE ARG...`; people use the "
        "subcommands below.",
        epilog=f"Set {VERSION_OVERRIDE_ENV} to make `version` report another version "
        "(for Moodle releases with another version gate).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=reported_version(),
        help="print the version Moodle sees and exit",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what happens to stderr (stdout keeps only the answer)",
    )
    commands = _Commands(parser)
    for declare in (
        _training_command,
        _prediction_command,
        _evaluation_command,
        _export_command,
        _import_command,
        _version_command,
        _serve_command,
        _passwd_command,
    ):
        declare(commands)
    return parser


def _model_options(p: Parser, json_answer: bool = False) -> None:
    p.add_argument(
        "--model-id",
        default="default",
        help="name of the model (Moodle's unique id); default: %(default)s",
    )
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        help="directory that holds the model (Moodle's OUTPUTDIR); default: "
        "a directory named after the model id under the user data directory",
    )
    if json_answer:
        p.add_argument(
            "--json",
            action="store_true",
            help="print the answer as one JSON line at a terminal too (elsewhere "
            "it always is: Moodle reads that line)",
        )


def _training_command(commands: _Commands) -> None:
    p = commands.add(
        "training",
        _train,
        ["--model-id", "--model-dir", "DATASET"],
        help="train a model, or continue training it on new rows",
        description="Train the model on a Moodle training CSV. When the model "
        "was trained before, training continues from it.",
    )
    p.add_argument("dataset", metavar="DATASET", help="Moodle training CSV file")
    _model_options(p, json_answer=True)


def _prediction_command(commands: _Commands) -> None:
    p = commands.add(
        "prediction",
        _predict,
        ["--model-id", "--model-dir", "DATASET"],
        help="predict the samples of a Moodle prediction CSV",
        description="Print [sampleid, class, probability] for every row.",
    )
    p.add_argument("dataset", metavar="DATASET", help="Moodle prediction CSV file")
    _model_options(p, json_answer=True)


def _evaluation_command(commands: _Commands) -> None:
    p = commands.add(
        "evaluation",
        _evaluate,
        ["--model-id", "--model-dir", "DATASET", "--min-score", "--max-deviation", "--iterations"],
        moodle_optional=("--trained-model-dir",),
        help="measure how well a model would predict",
        description="Train on random 80 % splits and score the other 20 %, "
        "ITERATIONS times; or, with --trained-model-dir, score that "
        "model on every row. Logs go to DIR/logs/RUNID/.",
    )
    p.add_argument("dataset", metavar="DATASET", help="Moodle training CSV file")
    _model_options(p)
    p.add_argument(
        "--min-score",
        type=float,
        default=0.7,
        help="lowest acceptable mean F1 score; default: %(default)s",
    )
    p.add_argument(
        "--max-deviation",
        type=float,
        default=0.05,
        help="highest acceptable deviation of the F1 score; default: %(default)s",
    )
    p.add_argument(
        "--iterations", type=int, default=10, help="number of random splits; default: %(default)s"
    )
    p.add_argument(
        "--trained-model-dir",
        metavar="DIR",
        help="score the model trained in DIR instead of training new ones",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the answer as one JSON line at a terminal too (elsewhere "
        "it always is: Moodle reads that line)",
    )


def _export_command(commands: _Commands) -> None:
    p = commands.add(
        "export",
        _export,
        ["--model-id", "--model-dir", "EXPORTDIR"],
        help="copy a trained model into a directory",
        description="Write the model into EXPORTDIR and print that directory.",
    )
    p.add_argument("export_dir", metavar="EXPORTDIR", help="directory to write the model into")
    _model_options(p)


def _import_command(commands: _Commands) -> None:
    p = commands.add(
        "import",
        _import,
        ["--model-id", "--model-dir", "IMPORTDIR"],
        help="store a model exported earlier as this model",
        description="Read the model exported into IMPORTDIR, check it and "
        "store it as this model; prints Ok.",
    )
    p.add_argument("import_dir", metavar="IMPORTDIR", help="directory an export wrote")
    _model_options(p)


def _version_command(commands: _Commands) -> None:
    commands.add(
        "version",
        _version,
        [],
        help="print the version Moodle sees",
        description="Print the version string alone, as Moodle expects.",
    )


def _serve_command(commands: _Commands) -> None:
    from mlbackend.server.config import MIB, ServerConfig  # light: no server code

    p = commands.add(
        "serve",
        _serve,
        help="serve Moodle's server mode over HTTP",
        description="Answer Moodle's mlbackend_python in server mode (HTTP with Basic auth). "
        "Users come from MOODLE_MLBACKEND_PYTHON_USERS (create entries with "
        "`mlbackend passwd`); models are kept in MOODLE_MLBACKEND_PYTHON_DIR, or "
        "in the S3 bucket MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME; temporary files "
        "go to MOODLE_MLBACKEND_TEMPDIR. It speaks plain HTTP: put it behind a "
        "TLS reverse proxy such as nginx.",
    )
    p.add_argument(
        "--host",
        default=ServerConfig.host,
        help="address to listen on (0.0.0.0: every interface); default: %(default)s",
    )
    p.add_argument(
        "--port",
        type=int,
        default=ServerConfig.port,
        help="TCP port to listen on (0 picks a free one); default: %(default)s",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=ServerConfig.workers,
        metavar="N",
        help="requests handled at once (threads); a queued training holds one, "
        "so keep it well above --max-trainings; default: %(default)s",
    )
    p.add_argument(
        "--max-trainings",
        type=int,
        default=ServerConfig.max_trainings,
        metavar="N",
        help="trainings and evaluations run at once, the rest wait their turn "
        "(each uses every core); default: %(default)s",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=ServerConfig.max_upload_bytes // MIB,
        metavar="MB",
        help="largest request body accepted, in MiB; a larger upload gets HTTP "
        "413; default: %(default)s",
    )
    p.add_argument(
        "--max-unzipped-mb",
        type=int,
        default=ServerConfig.max_unzipped_bytes // MIB,
        metavar="MB",
        help="largest total size an imported zip may expand to, in MiB; default: %(default)s",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=ServerConfig.max_connections,
        metavar="N",
        help="connections open at once; when all are taken, the oldest without a "
        "request in progress are closed to let new clients in; default: sized from "
        "the limit of open files (raised to its hard limit at start), at most 1000",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=ServerConfig.header_timeout,
        metavar="SECONDS",
        help="seconds a request's headers may take from its first byte; a slower "
        "client is closed (Moodle sends them at once); default: %(default)s",
    )
    p.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="endpoint of an S3-compatible store (MinIO, Ceph...) when "
        "MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME is set; default: AWS, or "
        "AWS_ENDPOINT_URL",
    )
    p.add_argument(
        "--s3-connect-timeout",
        type=float,
        default=ServerConfig.s3_connect_timeout,
        metavar="SECONDS",
        help="S3: longest wait for a connection to the store; default: %(default)s",
    )
    p.add_argument(
        "--s3-read-timeout",
        type=float,
        default=ServerConfig.s3_read_timeout,
        metavar="SECONDS",
        help="S3: longest the store may stay silent during a request; default: %(default)s",
    )
    p.add_argument(
        "--s3-deadline",
        type=float,
        default=ServerConfig.s3_deadline,
        metavar="SECONDS",
        help="S3: longest a request waits on the store for one step (reading a model, "
        "storing one, a delete), retries included; then it is answered 503; at least "
        "the two timeouts together; default: %(default)s",
    )
    p.add_argument(
        "--s3-max-waiting",
        type=int,
        default=ServerConfig.s3_max_waiting,
        metavar="N",
        help="S3: requests waiting on the store at once (half of them at most on one "
        "model); more are answered 503 with Retry-After, so threads stay free for the "
        "rest; below --workers; default: --workers minus 2",
    )
    p.add_argument(
        "--trusted-proxy",
        metavar="ADDR",
        help="address of the reverse proxy whose X-Forwarded-For and "
        "X-Forwarded-Proto headers are believed (the access log then shows "
        "the real client); default: none",
    )


def _passwd_command(commands: _Commands) -> None:
    from mlbackend.server.config import PBKDF2_ITERATIONS  # light: no server code

    p = commands.add(
        "passwd",
        _passwd,
        help="print MOODLE_MLBACKEND_PYTHON_USERS entries for users",
        description="Print one line for MOODLE_MLBACKEND_PYTHON_USERS: a "
        "user:pbkdf2_sha256:ITERATIONS:SALT:HASH entry per user, comma-separated. "
        "Asks for each password (twice) unless --generate or --stdin is given. "
        "The server also accepts plain-text and old sha256:SALT:HEX entries.",
    )
    p.add_argument("users", nargs="+", metavar="USER", help="user name (no ',' or ':')")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--generate", action="store_true", help="make up random passwords and print them on stderr"
    )
    how.add_argument(
        "--stdin",
        action="store_true",
        help="read the passwords from standard input, one line per user",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=PBKDF2_ITERATIONS,
        help="PBKDF2 iterations; default: %(default)s",
    )


def moodle_modules(parser: Parser) -> dict[str, Parser]:
    """The subcommands Moodle calls as `-m moodlemlbackend.NAME`."""
    return {
        name: p for name, p in parser.commands.items() if p.get_default("moodle_args") is not None
    }


def moodle_argv(argv: list[str], parser: Parser) -> list[str]:
    """Rewrite `-m moodlemlbackend.MODULE ARG...` into the human form."""
    module = argv[1].split(".", 1)[1] if "." in argv[1] else argv[1]
    modules = moodle_modules(parser)
    if module not in modules:
        raise UsageError(
            f"Unknown module {argv[1]!r}; Moodle calls one of "
            f"{', '.join('moodlemlbackend.' + m for m in modules)}."
        )
    names: list[str] = modules[module].get_default("moodle_args")
    optional: list[str] = modules[module].get_default("moodle_optional")
    values = argv[2:]
    if len(values) < len(names):
        raise UsageError(
            f"Missing arguments, expected {len(names)} "
            f"({', '.join(n.strip('-') for n in names)}), got {len(values)}.",
            runid=str(int(time.time())),
        )
    out = [module]
    for name, value in zip(names + optional, values):
        # NAME=VALUE: a value that starts with '-' ("-inf") is not read as an option
        out += [f"{name}={value}"] if name.startswith("--") else [value]
    return out


def is_moodle_argv(argv: list[str]) -> bool:
    return len(argv) >= 2 and argv[0] == "-m"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (the answer's status)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging(argv)
    try:
        parser = build_parser()
        if is_moodle_argv(argv):
            argv = moodle_argv(argv, parser)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return int(exc.code or 0)
        with _stdout_to_stderr():
            result = args.handler(args)
        if isinstance(result, dict):
            _emit(format_answer(args.command, result, as_json=args.json or not _at_terminal()))
            return int(result["status"])
        if result is not None:
            _emit(result)
        return 0
    except BackendError as exc:
        if isinstance(exc, UsageError) and argv[:1] == ["serve"]:
            exc.status = CONFIG_ERROR  # serve's options come from the service's settings
        _emit(format_answer(None, exc.answer(), as_json="--json" in argv or not _at_terminal()))
        return exc.status
    except KeyboardInterrupt:
        _emit(to_json_line({"status": GENERAL_ERROR, "info": ["Interrupted."]}))
        return GENERAL_ERROR
    except Exception as exc:  # noqa: BLE001 - the contract wants an answer, always
        log.error("unexpected error:\n%s", traceback.format_exc())
        text = str(exc)
        text = text[:200] + "..." if len(text) > 200 else text  # bounded, as every message
        message = f"Unexpected error ({type(exc).__name__}: {text}). See the log on stderr."
        _emit(to_json_line({"status": GENERAL_ERROR, "info": [message]}))
        return GENERAL_ERROR


# The handlers: each turns parsed arguments into a call of `mlbackend.actions`
# and returns the answer (a dict, printed as JSON), a text, or None.


def _model_dir(args: argparse.Namespace) -> str:
    from mlbackend import store

    return str(args.model_dir or store.default_model_dir(args.model_id))


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from mlbackend import actions

    return actions.train(_model_dir(args), args.dataset, progress=sys.stderr.isatty())


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    from mlbackend import actions

    return actions.predict(_model_dir(args), args.dataset)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from mlbackend import actions

    return actions.evaluate(
        _model_dir(args),
        args.dataset,
        args.min_score,
        args.max_deviation,
        args.iterations,
        trained_model_dir=args.trained_model_dir,
        progress=sys.stderr.isatty(),
    )


def _export(args: argparse.Namespace) -> str:
    from mlbackend import actions

    return actions.export(_model_dir(args), args.export_dir)


def _import(args: argparse.Namespace) -> str:
    from mlbackend import actions

    actions.import_(_model_dir(args), args.import_dir)
    return "Ok"


def _version(args: argparse.Namespace) -> str:
    return reported_version()  # before NumPy is imported: Moodle calls it often


def _serve(args: argparse.Namespace) -> None:
    """`mlbackend serve`: build the server and run it until stopped."""
    from mlbackend.server.config import ServerConfig
    from mlbackend.server.wsgi import serve as run_server  # the HTTP stack: only here

    run_server(ServerConfig.from_args(args))


def _passwd(args: argparse.Namespace) -> str:
    """`mlbackend passwd`: entries for MOODLE_MLBACKEND_PYTHON_USERS, one line."""
    import getpass

    from mlbackend.server import auth

    for user in args.users:
        auth.check_user_name(user)
    if not (args.stdin or args.generate or (sys.stdin and sys.stdin.isatty())):
        raise UsageError(
            "There is no terminal to ask for the password on (ssh or podman exec without -t?): "
            "give the password on standard input with --stdin, one line per user, "
            "or make one up with --generate."
        )
    lines = sys.stdin.read().splitlines() if args.stdin else []
    if args.stdin and len(lines) < len(args.users):
        raise UsageError(
            f"--stdin gave {len(lines)} password line(s) for {len(args.users)} user(s)."
        )
    entries = []
    for i, user in enumerate(args.users):
        if args.generate:
            password = auth.new_password()
            sys.stderr.write(f"password for {user}: {password}\n")
        elif args.stdin:
            password = lines[i]
        else:
            password = getpass.getpass(f"password for {user}: ")
            if getpass.getpass(f"password for {user} again: ") != password:
                raise UsageError(f"The two passwords for {user} differ.")
        if not password:
            raise UsageError(f"The password for {user} is empty.")
        entries.append(auth.make_entry(user, password, args.iterations))
    return ",".join(entries)


def _at_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr while working, so that nothing a
    library prints (TensorFlow's C++ code writes to fd 1 directly) comes
    after Moodle's answer, which is written once this is over."""
    try:
        fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured streams, e.g. in tests
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        os.dup2(err_fd, fd)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)


class StderrHandler(logging.StreamHandler):
    """The program's log on stderr: whatever `sys.stderr` is at the moment of
    writing, so that a caller who redirects it (tests, an embedding) gets it."""

    _mlbackend = True  # the server's start-up finds it by this mark

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(argv: list[str]) -> None:
    verbose = "-v" in argv or "--verbose" in argv
    logger = logging.getLogger("mlbackend")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("mlbackend: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    for h in logger.handlers:
        if isinstance(h, StderrHandler):
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    # The logger passes INFO on so that evaluation's info.log gets it.
    logger.setLevel(logging.INFO)


def main_exit(argv: list[str] | None = None) -> None:
    """Entry point of the program (console script, `python -m mlbackend`).

    Once TensorFlow is loaded, a normal interpreter exit spends most of a
    second tearing it down after Moodle's answer is already written; every
    file we wrote is closed by then, so leave at once.
    """
    status = main(argv)
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(status)
    sys.exit(status)
