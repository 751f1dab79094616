"""Unit tests of the lab tool (lab/labkit). A package, so that its conftest is not the
module `conftest` that tests/app imports from."""
