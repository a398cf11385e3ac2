"""The Pythia configuration table (`pythia.toml`), installed as the package `neox_mini.configs`."""
