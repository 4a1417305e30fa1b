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
        help="reproduce the paper's Table 3 (rows x seeds as DVC experiments) into results/table3/<table-id>/",
        description="Run every selected Table 3 row x seed that has no record yet as a DVC experiment "
                    "(t3-<row>-s<seed>), write a record of each finished run to results/table3/<table-id>/"
                    "<row>-s<seed>/, and rebuild table.md, table.json and figures/ there from the records: "
                    "mean ± std over seeds, the paper's numbers, and each row's overall difference to the "
                    "previous row and to row 3 with a 95% bootstrap interval over dev examples and seeds.",
    )
    parser.add_argument("--scale", default="full",
                        help="a scale of table3.yaml's scales (overrides for every row), e.g. reduced "
                             "(default: full, params.yaml as it is)")
    parser.add_argument("--rows", type=_comma_list, default=None,
                        help="row ids of table3.yaml, e.g. 0,BP1 (default: all)")
    parser.add_argument("--seeds", type=_comma_ints, default=None,
                        help="seeds, e.g. 1,2 (default: table3.yaml's seeds)")
    parser.add_argument("--epochs", type=_positive, default=None, help="also set train.epochs for every run")
    parser.add_argument("--steps-per-epoch", type=_positive, default=None,
                        help="also set train.steps_per_epoch for every run")
    parser.add_argument("--subset", type=_non_negative, default=None,
                        help="also set data.subset for every run: a seeded random sample of N rows of every split")
    parser.add_argument("--resume", action="store_true",
                        help="keep valid records (and record finished experiments); run only what is missing")
    parser.add_argument("--rerun-changed", action="store_true",
                        help="with --resume: also run again the records whose row params.yaml now defines "
                             "differently (without it such records stop the command, nothing is written)")
    parser.add_argument("--collect", action="store_true",
                        help="no training: record the experiments that finished (e.g. a queue run by hand), then "
                             "rebuild the table")
    parser.add_argument("--rebuild", action="store_true",
                        help="no training, no DVC, no MLflow: rebuild table.md, table.json and figures/ from the "
                             "committed records")
    parser.add_argument("--jobs", "-j", type=_positive, default=1,
                        help="experiments run at a time (default: %(default)s)")
    parser.add_argument("--table-id", default=None,
                        help="folder under results/table3/ and MLflow tag table3_id (default: the scale's name)")
    parser.add_argument("--resamples", type=_positive, default=1000,
                        help="bootstrap resamples per interval (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=None,
                        help="the params every row starts from (default: params.yaml in the project root)")
    parser.add_argument("--catalogue", type=Path, default=None,
                        help="the Table 3 rows, seeds and scales (default: table3.yaml in the project root)")
    parser.set_defaults(handler=run_table3)


def run_table3(args: argparse.Namespace) -> int:
    import dataclasses

    from palbert.config import TABLE3_FILE, load_params, load_table3
    from palbert.table3 import BootstrapSettings, Table3Error, Table3Request, make_table3, rebuild_table
    from palbert.table3.report import render_markdown
    from palbert.table3.runner import table_folder
    from palbert.paths import find_project_root

    root = find_project_root()
    params = load_table3(args.catalogue or root / TABLE3_FILE, load_params(args.params or root / PARAMS))
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
        table = rebuild_table(root, params, table_id, bootstrap)
    else:
        table_id = args.table_id or scale_name
        table = make_table3(root, params, Table3Request(
            rows=args.rows, seeds=args.seeds, scale=scale_name, resume=args.resume, train=not args.collect,
            jobs=args.jobs, rerun_stale=args.rerun_changed,
            table_id=table_id, bootstrap=bootstrap))
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
                    "output line, so output line N answers input line N.",
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
    try:
        data = path.read_bytes() if path else sys.stdin.buffer.read()
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; --input takes a text file with one input per line") from None
    except OSError as exc:
        raise ValueError(f"{path or 'standard input'}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        fix = (f"`iconv -f latin1 -t utf-8 {path} > {path.with_name(path.stem + '-utf8' + path.suffix)}`" if path
               else "pipe it through `iconv -f latin1 -t utf-8`")
        raise ValueError(f"{path or 'standard input'} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}): convert it first, e.g. {fix} (latin1 for Western European text)") from None


def run_predict(args: argparse.Namespace) -> int:
    from palbert.predict import Predictor

    lines = list(args.sentences) if args.sentences else read_input_lines(args.input)
    filled = [number for number, line in enumerate(lines) if line.strip()]  # blank lines keep their place
    first, second = [], []
    for number in filled:
        parts = lines[number].split("\t")
        if args.task in PAIR_TASKS:
            if len(parts) != 2:
                raise ValueError(f"input line {number + 1}: expected two sentences separated by a tab, "
                                 f"got {lines[number]!r}")
            second.append(parts[1])
        first.append(parts[0])
    values: dict[int, str] = {}
    if filled:
        predictor = Predictor.load(args.model, precision=args.precision)
        predictions = predictor.predict(args.task, first, second if args.task in PAIR_TASKS else None)
        values = {number: TASK_SPECS[args.task].format(value) for number, value in zip(filled, predictions)}
    for number in range(len(lines)):
        print(values.get(number, ""))
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
    from palbert.config import load_params

    for key, value in load_params(args.path).flat().items():
        print(f"{key} = {value!r}")
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

#: One ``add_<name>(subparsers)`` per subcommand; each sets ``handler``.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (add_table3, add_predict, add_check_params)


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
        log.error("interrupted (queued DVC experiments may still be running: `dvc queue status`)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
