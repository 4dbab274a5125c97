"""The examples in docs/ run and print what they claim."""

import doctest
import pathlib

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", ["batchnorm_vs_layernorm.md"])
def test_doc_examples(name):
    result = doctest.testfile(str(DOCS / name), module_relative=False,
                              optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
