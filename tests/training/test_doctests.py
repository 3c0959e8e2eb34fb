import doctest

import pytest

from skipdecode.training import data, schedules, trainer


@pytest.mark.parametrize("module", [data, schedules, trainer])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
