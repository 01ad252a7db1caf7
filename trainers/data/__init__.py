"""Dataset readers and containers (glyphs, CUB, Cars, SOP, In-shop, VehicleID)."""
