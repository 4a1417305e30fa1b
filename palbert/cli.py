"""The ``palbert`` command: one function per subcommand, each a thin layer over a library module."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from palbert.logs import setup_logging
from palbert.config import SCORING_PRECISIONS
from palbert.paths import PARAMS
from palbert.tasks import PAIR_TASKS, TASK_SPECS, TASKS

log = logging.getLogger("palbert")


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _comma_ints(text: str) -> list[int]:
    try:
        return [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# palbert table3
# --------------------------------------------------------------------------------------------


def add_table3(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "table3",
        help="reproduce the paper's Table 3 (rows x seeds as Ray tasks) into results/table3/<table-id>/",
        description="Run every selected Table 3 row x seed that has no record yet as a Ray task (the "
                    "pipeline's stages at HEAD, t3-<row>-s<seed> in MLflow), write a record of each finished run to "
                    "results/table3/<table-id>/<row>-s<seed>/, and rebuild table.md, table.json and figures/ there from the records: "
                    "mean ± std over seeds, the paper's numbers, and each row's overall difference to the "
                    "previous row and to row 3 with a 95% bootstrap interval over dev examples and seeds.",
    )
    parser.add_argument("--scale", default="full",
                        help="a scale of table3.yaml's scales (overrides for every row), e.g. reduced "
                             "(default: full, params.yaml as it is)")
    parser.add_argument("--rows", type=_comma_list, default=None,
                        help="row ids of table3.yaml, e.g. 0,BP1 (default: all)")
    parser.add_argument("--seeds", type=_comma_ints, default=None,
                        help="seeds, e.g. 1,2 (default: table3.yaml's seeds); a row that names its own seeds runs "
                             "those of them only")
    parser.add_argument("--epochs", type=_positive, default=None, help="also set train.epochs for every run")
    parser.add_argument("--steps-per-epoch", type=_positive, default=None,
                        help="also set train.steps_per_epoch for every run")
    parser.add_argument("--subset", type=_non_negative, default=None,
                        help="also set data.subset for every run: a seeded random sample of N rows of every split")
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # accepted: valid records are always kept
    parser.add_argument("--rerun-changed", action="store_true",
                        help="also run again the records whose row is now defined differently (without it such "
                             "records stop the command, nothing is written)")
    parser.add_argument("--rebuild", action="store_true",
                        help="no training, no Ray, no MLflow: rebuild table.md, table.json and figures/ from the "
                             "committed records")
    parser.add_argument("--drop-unreadable", action="store_true",
                        help="with --rebuild: leave out records that cannot be read (without it they stop the "
                             "rebuild, nothing is written)")
    parser.add_argument("--jobs", "-j", type=_positive, default=1, help="runs at a time (default: %(default)s)")
    parser.add_argument("--address", default=None, metavar="HOST:PORT|auto",
                        help="run on this Ray cluster (default: a private Ray instance on this machine)")
    parser.add_argument("--cpus-per-run", type=_positive_float, default=1.0,
                        help="CPUs each run holds, also its intra-op threads (default: %(default)s)")
    parser.add_argument("--gpus-per-run", type=_non_negative_float, default=0.0,
                        help="GPUs each run holds; fractional packs runs on one GPU, e.g. 0.125: 8 per GPU "
                             "(default: %(default)s)")
    parser.add_argument("--tracking-uri", default="",
                        help="the MLflow store every node logs to (default: tracking.uri, else "
                             "$MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    parser.add_argument("--node-cache", default="~/.cache/palbert/table3", metavar="DIR",
                        help="on each node: prepared data (a DVC cache), run workspaces and logs "
                             "(default: %(default)s)")
    parser.add_argument("--table-id", default=None,
                        help="folder under results/table3/ and MLflow tag table3_id (default: the scale's name)")
    parser.add_argument("--resamples", type=_positive, default=1000,
                        help="bootstrap resamples per interval (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=None,
                        help="the params every row starts from (default: params.yaml as committed at HEAD, which "
                             "is the commit every run checks out)")
    parser.add_argument("--catalogue", type=Path, default=None,
                        help="the Table 3 rows, seeds and scales (default: table3.yaml in the project root)")
    parser.set_defaults(handler=run_table3)


def run_table3(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from palbert.params_file import TABLE3_FILE, load_params, load_table3
    from palbert.table3 import BootstrapSettings, Table3Error, Table3Request, make_table3, rebuild_table
    from palbert.table3.report import render_markdown
    from palbert.table3.executor import ExecutorSettings
    from palbert.table3.plan import committed_params
    from palbert.table3.runner import table_folder
    from palbert.paths import find_project_root

    root = find_project_root()
    params = load_table3(args.catalogue or root / TABLE3_FILE,
                         load_params(args.params) if args.params else committed_params(root))
    shrink = {key: value for key, value in (("train.epochs", args.epochs), ("train.steps_per_epoch",
              args.steps_per_epoch), ("data.subset", args.subset)) if value is not None}
    scale_name = args.scale
    if shrink:  # an ad hoc scale: a table of its own, never mixed with the named scale's records
        if not args.table_id:
            raise Table3Error("--epochs, --steps-per-epoch and --subset make a scale of their own: name its "
                              "table with --table-id")
        scale_name = f"{args.scale}+" + ",".join(f"{k}={v}" for k, v in shrink.items())
        scales = {**params.table3.scales, scale_name: {**params.table3.scale(args.scale), **shrink}}
        params = dataclasses.replace(params, table3=dataclasses.replace(params.table3, scales=scales))
    bootstrap = BootstrapSettings(resamples=args.resamples)
    if args.rebuild:
        table_id = args.table_id or args.scale
        table = rebuild_table(root, params, table_id, bootstrap, drop_unreadable=args.drop_unreadable)
    else:
        table_id = args.table_id or scale_name
        table = make_table3(root, params, Table3Request(
            rows=args.rows, seeds=args.seeds, scale=scale_name, rerun_stale=args.rerun_changed,
            table_id=table_id, tracking_uri=args.tracking_uri, bootstrap=bootstrap,
            executor=ExecutorSettings(address=args.address, jobs=args.jobs, cpus_per_run=args.cpus_per_run,
                                      gpus_per_run=args.gpus_per_run, node_cache=args.node_cache,
                                      mirror=os.environ.get("PALBERT_DATA_MIRROR", ""))))
    print(render_markdown(table))
    folder = table_folder(root, table_id).relative_to(root)
    print(f"Written: {folder}/table.md, table.json, figures/. MLflow UI filter: {table['mlflow_filter']}")
    return 0


# --------------------------------------------------------------------------------------------
# palbert predict
# --------------------------------------------------------------------------------------------


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict with a trained model (default: models/best): sentiment of sentences, paraphrase / "
             "similarity of pairs",
        description="Reads one input per line from --input (or standard input, UTF-8): a sentence for sst, "
                    "two sentences separated by a tab for para and sts. Writes one prediction per input line "
                    "(sst: class 0..4, para: 0/1, sts: similarity 0..5); a blank input line gives a blank "
                    "output line, so output line N answers input line N. Lines end at \\n (or \\r\\n) only; a "
                    "line that cannot be one input (another line end inside it, a tab in an sst line) is refused.",
    )
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("sentences", nargs="*", help="inputs on the command line (pairs: 'a<TAB>b')")
    parser.add_argument("--model", type=Path, default=Path("models/best"), metavar="DIR",
                        help="trained model folder (default: %(default)s, what `dvc repro` writes)")
    parser.add_argument("--input", type=Path, default=None, metavar="FILE",
                        help="UTF-8 file with one input per line (default: standard input)")
    parser.add_argument("--precision", choices=SCORING_PRECISIONS, default="auto",
                        help="autocast dtype (default: %(default)s: bf16 on a GPU with bf16 or a CPU with AMX, where "
                             "it is faster; fp32 elsewhere); int8: linear layers in int8 on the CPU, faster, and "
                             "its scores differ slightly (benchmarks/int8_scoring.py measures both)")
    parser.set_defaults(handler=run_predict)


def read_input_lines(path: Path | None) -> list[str]:
    """The lines of ``path`` (standard input when None), decoded as UTF-8 or refused in one clear line."""
    from palbert.predict import split_input_lines

    try:
        data = path.read_bytes() if path else sys.stdin.buffer.read()
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; --input takes a text file with one input per line") from None
    except OSError as exc:
        raise ValueError(f"{path or 'standard input'}: cannot read it ({exc.strerror or exc})") from None
    try:
        return split_input_lines(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        fix = (f"`iconv -f cp1252 -t utf-8 {path} > {path.with_name(path.stem + '-utf8' + path.suffix)}`" if path
               else "pipe it through `iconv -f cp1252 -t utf-8`")
        # cp1252, not latin1: latin1 turns its bytes 0x80-0x9f (curly quotes, "…") into control characters
        raise ValueError(f"{path or 'standard input'} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}): convert it first, e.g. {fix} (Windows-1252, for Western European "
                         "text)") from None


def run_predict(args: argparse.Namespace) -> int:
    from palbert.predict import Predictor, parse_input_lines

    lines = list(args.sentences) if args.sentences else read_input_lines(args.input)
    source = "argument" if args.sentences else f"{args.input or 'standard input'} line"
    inputs = parse_input_lines(lines, args.task, source)
    values: dict[int, str] = {}
    if inputs.numbers:  # blank lines keep their place: output line N answers input line N
        predictor = Predictor.load(args.model, precision=args.precision)
        predictions = predictor.predict(args.task, inputs.first, inputs.second if args.task in PAIR_TASKS else None)
        values = {number: TASK_SPECS[args.task].format(value) for number, value in zip(inputs.numbers, predictions)}
    for number in range(len(lines)):
        print(values.get(number, ""))
    return 0


# --------------------------------------------------------------------------------------------
# palbert serve
# --------------------------------------------------------------------------------------------


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the registry's @champion (or --model URI) over HTTP with `mlflow models serve`",
        description="Finds the model in the tracking store (tracking.uri of params.yaml, else $MLFLOW_TRACKING_URI, "
                    "else the project's mlflow.db), then runs `mlflow models serve -m URI --env-manager local`. "
                    "Without --model it serves models:/<tracking.experiment>@champion, and says in one line why "
                    "when no version is champion (docs/tracking-and-models.md).")
    parser.add_argument("--model", default=None, metavar="URI",
                        help="an MLflow model URI: runs:/<run id>/model, models:/palbert/3 (default: the @champion)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_positive, default=5001, help="port (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="print the model URI it would serve, and exit")
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import os

    from mlflow import MlflowClient

    from palbert.config import Params
    from palbert.params_file import load_params
    from palbert.registry import NotServable, servable_uri
    from palbert.tracking.store import resolve_tracking_uri

    params = load_params(PARAMS) if PARAMS.is_file() else Params()
    uri = resolve_tracking_uri(params.tracking)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise NotServable(f"no MLflow store at {uri[len('sqlite:///'):]}: nothing was trained here yet "
                          "(`dvc repro` trains, evaluates and registers a model)")
    model = servable_uri(MlflowClient(uri), params.tracking.experiment, args.model, uri)
    if args.check:
        print(model)
        return 0
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "--host", args.host, "--port", str(args.port)]
    log.info("serving %s from %s on http://%s:%d/invocations", model, uri, args.host, args.port)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    sys.stdout.flush()
    os.execv(command[0], command)  # MLflow's own server, in this process's place: Ctrl-C and signals reach it
    return 0


# --------------------------------------------------------------------------------------------
# palbert check-params
# --------------------------------------------------------------------------------------------


def add_check_params(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check-params", help="validate params.yaml and print the flattened values")
    parser.add_argument("path", type=Path, nargs="?", default=PARAMS,
                        help="the params file to check (default: params.yaml in the project root)")
    parser.set_defaults(handler=run_check_params)


def run_check_params(args: argparse.Namespace) -> int:
    from palbert.params_file import load_params

    for key, value in load_params(args.path).flat().items():
        print(f"{key} = {value!r}")
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

#: One ``add_<name>(subparsers)`` per subcommand; each sets ``handler``.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (add_table3, add_predict, add_serve,
                                                                          add_check_params)


def build_parser() -> argparse.ArgumentParser:
    from palbert import __version__

    parser = argparse.ArgumentParser(prog="palbert", description="palbert: multi-task PAL BERT experiments")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but inputs may also follow options (``predict sst --model DIR "x"``, also after
    ``--``: ``predict sst --model DIR -- "-5 stars"``).

    argparse fills a ``nargs="*"`` positional before the options that follow it and then calls the words
    after them unrecognized (``parse_intermixed_args`` does not work with subcommands); they are the
    subcommand's remaining inputs.
    """
    args, extra = parser.parse_known_args(argv)
    # after a `--` every word is an input, even one that starts with "-" ("-5 stars, awful")
    before, after = (extra[:extra.index("--")], extra[extra.index("--") + 1:]) if "--" in extra else (extra, [])
    if extra and isinstance(getattr(args, "sentences", None), list) and not any(w.startswith("-") for w in before):
        args.sentences.extend(before + after)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    from palbert.stage import user_errors
    from palbert.table3 import Table3Error

    try:
        return args.handler(args) or 0
    except (Table3Error, ValueError, *user_errors()) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted: runs in progress stop with it; the same command again keeps every finished record")
        return 130


if __name__ == "__main__":
    sys.exit(main())
