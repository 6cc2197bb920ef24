"""The SSL methods; importing this package registers simclr, nnclr, barlow_twins and swav."""

from histo.encoders.methods.barlow_twins import BarlowTwins
from histo.encoders.methods.base import SSLMethod
from histo.encoders.methods.nnclr import NNCLR
from histo.encoders.methods.simclr import SimCLR
from histo.encoders.methods.swav import SwAV

__all__ = ["NNCLR", "BarlowTwins", "SSLMethod", "SimCLR", "SwAV"]
