"""The ``keras-mmoe`` command line. See :mod:`keras_mmoe.cli.main`."""
