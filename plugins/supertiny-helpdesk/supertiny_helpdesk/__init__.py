"""supertiny-helpdesk: an executable customer-support domain for supertiny, written to be copied."""
