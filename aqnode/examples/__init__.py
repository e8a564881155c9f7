"""Example handler modules that ship with aqnode (used by the README's demo)."""
