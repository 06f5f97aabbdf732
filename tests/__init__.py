"""Tests. Log records from code under test that no test captures are dropped rather than printed."""

import logging

logging.getLogger().addHandler(logging.NullHandler())
