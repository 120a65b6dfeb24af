# Flattens the subset of YAML that cloud-init seeds use, as Proxmox VE writes them, into lines
# "FILE:PATH<TAB>VALUE": FILE is the input file's name (several files may be given), keys are
# joined by ".", sequence items are "[N]", e.g.
# "network-config:config[0].subnets[0].address<TAB>10.0.2.15". Understood: block mappings and sequences by
# indentation (a sequence may sit at its key's indentation, as Proxmox writes them), plain,
# 'single-' and "double-quoted" scalars, comments, document markers. Block scalars (| and >)
# are skipped; anything else outside the subset is dropped line by line. Values carry no tab
# or newline. This only reads text: nothing in the input is ever executed.

function is_key(s) {
	return s ~ /^[A-Za-z0-9_.-]+:( |$)/
}

function indent_of(s,    n) {
	n = 0
	while (substr(s, n + 1, 1) == " ")
		n++
	return n
}

function unquote(v,    out, i, c, n) {
	n = length(v)
	if (substr(v, 1, 1) == "'") {
		out = ""
		for (i = 2; i <= n; i++) {
			c = substr(v, i, 1)
			if (c == "'") {
				if (substr(v, i + 1, 1) != "'")
					return out
				i++
			}
			out = out c
		}
		return out
	}
	if (substr(v, 1, 1) == "\"") {
		out = ""
		for (i = 2; i <= n; i++) {
			c = substr(v, i, 1)
			if (c == "\\") {
				i++
				c = substr(v, i, 1)
				if (c == "t")
					c = " "
				else if (c == "n")
					c = " "
			} else if (c == "\"") {
				return out
			}
			out = out c
		}
		return out
	}
	# plain scalar: a comment starts at a '#' after a blank
	sub(/[ \t]+#.*$/, "", v)
	sub(/[ \t]+$/, "", v)
	return v
}

function emit(p, v) {
	gsub(/[\t\r\n]/, " ", v)
	printf "%s:%s\t%s\n", file, p, v
}

# "key: value" in the mapping at the top of the stack, whose keys sit at column col.
function key_value(s, col,    k, v, full) {
	k = s
	sub(/:.*/, "", k)
	v = substr(s, length(k) + 2)
	sub(/^ +/, "", v)
	full = (path[d] == "" ? k : path[d] "." k)
	if (v == "" || v ~ /^#/) {
		pend = full
		pend_col = col
	} else if (v ~ /^[|>]/) {
		skip_above = col
	} else {
		emit(full, unquote(v))
	}
}

# Each file starts a new document.
FNR == 1 {
	d = 0
	typ[0] = "map"
	path[0] = ""
	started = 0
	pend = ""
	skip_above = -1
	file = FILENAME
	sub(/.*\//, "", file)
}

{
	line = $0
	sub(/\r$/, "", line)
	if (line ~ /^ *(#|$)/)
		next
	if (line ~ /^(---|\.\.\.)( |$)/)
		next
	i = indent_of(line)
	content = substr(line, i + 1)
	# a tab is no YAML indentation: not a line of this subset
	if (content ~ /^\t/)
		next
	if (skip_above >= 0) {
		if (i > skip_above)
			next
		skip_above = -1
	}
	if (!started) {
		ind[0] = i
		started = 1
	}
	dash = (content ~ /^-( |$)/)
	# leave the containers this line is not part of
	while (d > 0 && (ind[d] > i || (ind[d] == i && typ[d] == "seq" && !dash)))
		d--
	p = pend
	pc = pend_col
	pend = ""
	if (dash) {
		if (!(typ[d] == "seq" && ind[d] == i)) {
			if (p == "" || i < pc)
				next
			d++
			typ[d] = "seq"
			ind[d] = i
			path[d] = p
			cnt[d] = 0
		}
		item = path[d] "[" cnt[d] "]"
		cnt[d]++
		rest = substr(content, 2)
		col = i + 1 + indent_of(rest)
		rest = substr(rest, indent_of(rest) + 1)
		if (rest == "" || rest ~ /^#/) {
			pend = item
			pend_col = i
		} else if (rest ~ /^[|>]/) {
			skip_above = i
		} else if (is_key(rest)) {
			d++
			typ[d] = "map"
			ind[d] = col
			path[d] = item
			key_value(rest, col)
		} else {
			emit(item, unquote(rest))
		}
		next
	}
	if (!is_key(content))
		next
	if (!(typ[d] == "map" && ind[d] == i)) {
		if (p == "" || i <= pc)
			next
		d++
		typ[d] = "map"
		ind[d] = i
		path[d] = p
	}
	key_value(content, i)
}
