# The hostname, from the first source that names a valid one (see hemiron_pick_hostname);
# also writes the web pages that show it.
hemiron_set_hostname "$(hemiron_pick_hostname)"
