"""Tests. Log records from code under test that no test captures are dropped rather than printed.

The S3 histories' scratch copies go to a cache folder of this test process, never the user's ~/.cache
(utils/scratch.py): there, a test's copy of s3://crypto-history-test/history would be another test's,
run at the same time in another worker, and the tests would leave hundreds of folders behind. Each
PipelineTestCase gets a cache folder of its own on top (tests/support.py)."""

import atexit
import logging
import os
import shutil
import tempfile

logging.getLogger().addHandler(logging.NullHandler())

_CACHE = tempfile.mkdtemp(prefix="crypto-history-tests-cache-")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["XDG_CACHE_HOME"] = _CACHE
