import doctest

import pytest

from skipdecode.training import batches, schedules, trainer


@pytest.mark.parametrize("module", [batches, schedules, trainer])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
