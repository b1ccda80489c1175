"""License files from other systems (KOTS) turned into pullgate customers."""
