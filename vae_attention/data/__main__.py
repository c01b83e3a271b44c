"""``python -m vae_attention.data download {dsprites,mnist,ucsd,mvtec} --to DIR``: fetch the official data.

A user error or a failed download prints one line and exits 2; Ctrl-C exits 130 and keeps the partial
file, which the same command resumes.
"""

from __future__ import annotations

import argparse
import sys

from vae_attention.data.download import SOURCES, download
from vae_attention.data.mvtec import MVTEC_CATEGORIES
from vae_attention.errors import StudyError, run_command

NEXT_STEP = {
    "dsprites": "python -m study.run disentangle --data-dir {to}",
    "mnist": "python -m study.run anomaly --dataset mnist --data-dir {to}",
    "ucsd": "python -m study.run anomaly --dataset ucsd --data-dir {to}",
    "mvtec": "python -m study.run anomaly --dataset mvtec --data-dir {to}",
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m vae_attention.data",
                           description="Data-set tools of the VAE-attention study.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch = commands.add_parser(
        "download", help="fetch official data sets into the layout the loaders read",
        description="Fetch the official files into DIR, in the layout the loaders read (use DIR as --data-dir). "
                    "Each file is written as NAME.part and renamed only once validated (dSprites: arrays, shapes, "
                    "dtypes, 737,280 images, CRCs; MNIST: torchvision's md5 checksums; UCSD Ped1 / MVTec AD: the "
                    "archive members the loaders read), then archives are unpacked. An interrupted download is "
                    "resumed by running the same command again. Base URLs: --base-url, or the environment "
                    "variables VAE_ATTENTION_{DSPRITES,MNIST,UCSD,MVTEC}_URL (files are fetched from "
                    "BASE/<official file name>).")
    fetch.add_argument("datasets", nargs="+", choices=SOURCES, metavar="DATASET",
                       help=f"one or more of: {', '.join(SOURCES)}")
    fetch.add_argument("--to", required=True, metavar="DIR", help="target folder (created if missing)")
    fetch.add_argument("--category", nargs="+", choices=MVTEC_CATEGORIES, metavar="NAME", default=None,
                       help="MVTec AD categories (default: all 15)")
    fetch.add_argument("--base-url", metavar="URL", default=None,
                       help="fetch from this mirror instead of the official URL (one data set at a time)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.base_url and len(args.datasets) > 1:
        raise StudyError("--base-url applies to one data set; download the others in another command")
    if args.category and "mvtec" not in args.datasets:
        raise StudyError("--category applies to mvtec only")
    for name in dict.fromkeys(args.datasets):
        options = {"base_url": args.base_url, "progress": not args.no_progress}
        if name == "mvtec":
            options["categories"] = args.category
        paths = download(name, args.to, **options)
        for path in paths:
            print(f"{name}: {path}")
        print(f"{name}: ready; next: {NEXT_STEP[name].format(to=args.to)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser().parse_args(argv), "run the same command again to resume the download")


if __name__ == "__main__":
    sys.exit(main())
