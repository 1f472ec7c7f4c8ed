"""Research portfolio: grants, publications, their links and funding-trend figures."""
