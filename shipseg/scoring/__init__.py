"""What a ship is and how predicted ships are scored: ship geometry, outlines, the competition metric."""
