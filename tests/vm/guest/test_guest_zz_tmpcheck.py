import time, pytest
def test_fails():
    assert 1 == 2, "deliberate"
def test_skips():
    pytest.skip("deliberate skip")
def test_hangs():
    time.sleep(1000)
def test_after_hang_passes():
    pass
