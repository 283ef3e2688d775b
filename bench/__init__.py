"""`make bench`: Huifang against fair raw baselines on the same broker and database."""
