"""``python -m irreptensor_ml.transfer ...`` = ``irreptensor-ml transfer ...``."""

import sys

from irreptensor_ml.transfer.cli import main_transfer

sys.exit(main_transfer())
