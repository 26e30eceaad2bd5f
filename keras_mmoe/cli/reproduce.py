"""``keras-mmoe reproduce <study>``: the papers' experiments, tables and plots.

Studies (modules of :mod:`keras_mmoe.reproduce`, each with ``add_arguments`` and ``run``):
``census`` (MMoE paper section 6.3), ``synthetic`` (sections 3.2 and 5, task correlation),
``polarization`` (gate polarization and expert dropout, YouTube RecSys 2019).
"""

import importlib

from keras_mmoe.cli.common import add_config_argument


def add_parser(subparsers):
    from keras_mmoe.reproduce import STUDIES

    p = subparsers.add_parser(
        "reproduce",
        help="reproduce the papers' experiments (census, synthetic, polarization) as tables and plots",
        description=__doc__,
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    for name in STUDIES:
        try:
            module = importlib.import_module(f"keras_mmoe.reproduce.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"keras_mmoe.reproduce.{name}":
                continue  # a study not written yet is simply not offered
            raise
        first_line = (module.__doc__ or name).strip().splitlines()[0]
        sp = studies.add_parser(name, help=first_line, description=module.__doc__,
                                formatter_class=_formatter())
        module.add_arguments(sp)
        add_config_argument(sp)
        sp.set_defaults(func=module.run)
    p.set_defaults(func=lambda args: _no_study(p))
    return p


def _formatter():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def _no_study(parser):
    parser.print_help()
    return 2
