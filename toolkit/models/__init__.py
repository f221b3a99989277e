"""Model names, weight files and their formats, conversions and sizing -> what open_clip builds.

Imports: errors, identity, fsio (nothing above).
"""
