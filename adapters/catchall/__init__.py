"""NewsCatcher CatchAll: web-search jobs with staged progress, paged partial results, continue."""
