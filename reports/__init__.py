"""HTML diff reports of gradient checks (see the localisation issue); not yet written."""
