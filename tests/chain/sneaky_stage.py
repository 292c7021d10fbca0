"""A stage module for tests/chain/test_spec.py: it reads a params section it does not declare."""

from clipforge.gates.rules import Suite


def run(ctx):
    return ctx.params.student_model  # not in its declared sections: the runner must refuse


def quality_suite(params):
    return Suite(required=())
