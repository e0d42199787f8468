"""Studies over several runs: `compare` (methods x seeds, then a report) and `report`
(tables and plots of finished runs)."""
