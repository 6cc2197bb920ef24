"""Data layer: data set adapters, image decoding, tiling, synthetic H&E and shipped real samples."""
