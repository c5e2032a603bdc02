# Tables of scripts/bench.sh: awk -F'\t' -v format=text|md -f report.awk meta.txt results.tsv
#
# Ratios are umbra's figure divided by the peer's: for times, memory and
# sizes below 1 means umbra does better; for throughput above 1 does.

FNR == NR { meta[++nmeta] = $0; next }
FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{
	ds = $col["dataset"]; tool = $col["tool"]; step = $col["step"]
	if (!(ds in seends)) { seends[ds] = 1; dss[++nds] = ds }
	if (!(tool in seentool)) { seentool[tool] = 1; tools[++ntools] = tool }
	k = ds SUBSEP tool SUBSEP step
	have[k] = 1
	status[k] = $col["status"]
	wall[k] = $col["wall_s"]
	cpu[k] = $col["user_s"] + $col["sys_s"]
	rss[k] = $col["max_rss_kib"] / 1024
	repo[k] = $col["repo_bytes"] / 1048576
	growth[k] = $col["growth_bytes"]
	verify[k] = $col["verify"]
	dbytes[ds] = $col["data_bytes"]; dfiles[ds] = $col["data_files"]
	if ($col["changed_bytes"] != "") { cbytes[ds] = $col["changed_bytes"]; cunits[ds] = $col["changed_units"] }
	# Peak memory of the recurring steps; init runs once per repository.
	if (ok(k) && step != "init" && (!((ds, tool) in peak) || rss[k] > peak[ds, tool])) peak[ds, tool] = rss[k]
}

function ok(k) { return status[k] == "ok" || status[k] == "warnings" }
function mib(b) { return b / 1048576 }
function tput(ds, tool,   k) { k = ds SUBSEP tool SUBSEP "first"; return ok(k) && wall[k] > 0 ? mib(dbytes[ds]) / wall[k] : "" }
function ratio(a, b) { return a != "" && b != "" && b > 0 ? sprintf("%.2f", a / b) : "-" }
function num(v, f) { return v == "" ? "-" : sprintf(f, v) }
# val: one figure of a tool, "" when the step did not succeed.
function val(ds, tool, what,   k, w) {
	if (what == "mibps") return tput(ds, tool)
	if (what == "peak") return (ds, tool) in peak ? peak[ds, tool] : ""
	if (what == "growth") {
		k = ds SUBSEP tool SUBSEP "incremental"
		return ok(k) ? mib(growth[k]) : ""
	}
	split(what, w, ":")
	k = ds SUBSEP tool SUBSEP w[1]
	if (!ok(k)) return ""
	if (w[2] == "wall") return wall[k]
	if (w[2] == "cpu") return cpu[k]
	if (w[2] == "repo") return repo[k]
}
function fastest_peer(ds, step,   i, t, v, best) {
	best = ""
	for (i = 1; i <= ntools; i++) {
		t = tools[i]
		if (t ~ /^umbra/) continue # umbra-fast is umbra, not a peer
		v = val(ds, t, step ":wall")
		if (v != "" && (best == "" || v < best)) { best = v; bestname = t }
	}
	return best
}
function target(ds, text, pass, detail) {
	ntg++
	tg_text[ntg] = text; tg_detail[ntg] = detail
	tg_res[ntg] = pass == "" ? "n/a" : (pass ? "PASS" : "FAIL")
}
function targets(ds,   u, r, b, f, i, steps) {
	ntg = 0
	u = tput(ds, "umbra"); r = tput(ds, "restic"); b = tput(ds, "borg")
	target(ds, "first backup at least 1.5x restic's throughput", u == "" || r == "" ? "" : u >= 1.5 * r,
		u == "" || r == "" ? "" : sprintf("%.2fx", u / r))
	target(ds, "first backup faster than borg", u == "" || b == "" ? "" : u > b,
		u == "" || b == "" ? "" : sprintf("%.2fx borg's throughput", u / b))
	split("incremental restore", steps, " ")
	for (i = 1; i <= 2; i++) {
		u = val(ds, "umbra", steps[i] ":wall"); f = fastest_peer(ds, steps[i])
		target(ds, steps[i] " at least as fast as the fastest peer", u == "" || f == "" ? "" : u <= f,
			u == "" || f == "" ? "" : sprintf("umbra %.2f s, %s %.2f s", u, bestname, f))
	}
	u = val(ds, "umbra", "peak"); r = val(ds, "restic", "peak")
	target(ds, "peak memory no higher than restic's", u == "" || r == "" ? "" : u <= r,
		u == "" || r == "" ? "" : sprintf("%.0f vs %.0f MiB", u, r))
	if (ds == "pgdata") {
		u = val(ds, "umbra", "growth")
		target(ds, "repository growth at most 3x the changed bytes", u == "" || cbytes[ds] == "" ? "" : u * 1048576 <= 3 * cbytes[ds],
			u == "" || cbytes[ds] == "" ? "" : sprintf("%.2fx", u * 1048576 / cbytes[ds]))
	}
}

# rows of the summary: label, what, number format
BEGIN {
	nrows = split("first backup, s|first backup, MiB/s|first backup, CPU s|unchanged backup, s|incremental backup, s|incremental backup, CPU s|restore, s|peak RSS of backups and restore, MiB|repository after first backup, MiB|growth at incremental, MiB", rowlabel, "|")
	split("first:wall|mibps|first:cpu|unchanged:wall|incremental:wall|incremental:cpu|restore:wall|peak|first:repo|growth", rowwhat, "|")
	split("%.2f|%.1f|%.2f|%.2f|%.2f|%.2f|%.2f|%.0f|%.1f|%.2f", rowfmt, "|")
	nsteps = split("init first unchanged incremental restore", allsteps, " ")
}

function header(ds) {
	h = sprintf("%s: %.1f MiB in %d files", ds, mib(dbytes[ds]), dfiles[ds])
	if (ds in cbytes) h = h sprintf("; change: %d %s, %.2f MiB", cunits[ds], ds == "mixed" ? "files" : "pages", mib(cbytes[ds]))
	return h
}

function growth_note(ds, tool,   g) {
	g = val(ds, tool, "growth")
	return g == "" || cbytes[ds] == "" || cbytes[ds] == 0 ? "" : sprintf(" (%.2fx)", g * 1048576 / cbytes[ds])
}

END {
	if (format == "md") {
		print "Ratios are umbra ÷ peer: below 1 umbra is faster or smaller, except MiB/s where above 1 it is faster."
		print "Growth: repository growth at the incremental backup, in brackets as a multiple of the bytes changed."
		print ""
		for (d = 1; d <= nds; d++) {
			ds = dss[d]
			line = "| " header(ds) " |"; sep = "|---|"
			for (i = 1; i <= ntools; i++) { line = line " " tools[i] " |"; sep = sep "--:|" }
			for (i = 1; i <= ntools; i++) if (tools[i] != "umbra" && ("umbra" in seentool)) { line = line " umbra ÷ " tools[i] " |"; sep = sep "--:|" }
			print line; print sep
			for (r = 1; r <= nrows; r++) {
				line = "| " rowlabel[r] " |"
				for (i = 1; i <= ntools; i++) {
					cell = num(val(ds, tools[i], rowwhat[r]), rowfmt[r])
					if (rowwhat[r] == "growth" && cell != "-") cell = cell growth_note(ds, tools[i])
					line = line " " cell " |"
				}
				for (i = 1; i <= ntools; i++) if (tools[i] != "umbra" && ("umbra" in seentool))
					line = line " " ratio(val(ds, "umbra", rowwhat[r]), val(ds, tools[i], rowwhat[r])) " |"
				print line
			}
			print ""
			if ("umbra" in seentool) {
				targets(ds)
				for (t = 1; t <= ntg; t++) printf "- %s: %s%s\n", tg_text[t], tg_res[t], tg_detail[t] == "" ? "" : " (" tg_detail[t] ")"
				print ""
			}
		}
		for (m = 1; m <= nmeta; m++) print "- " meta[m]
		exit
	}
	for (m = 1; m <= nmeta; m++) print meta[m]
	for (d = 1; d <= nds; d++) {
		ds = dss[d]
		print ""
		print "== " header(ds)
		printf "%-12s %-7s %-10s %8s %8s %9s %10s %11s %8s  %s\n", "step", "tool", "status", "wall s", "cpu s", "peak MiB", "repo MiB", "growth MiB", "MiB/s", "verify"
		for (s = 1; s <= nsteps; s++) for (i = 1; i <= ntools; i++) {
			k = ds SUBSEP tools[i] SUBSEP allsteps[s]
			if (!(k in have)) continue
			printf "%-12s %-7s %-10s %8s %8s %9s %10s %11s %8s  %s\n", allsteps[s], tools[i], status[k],
				ok(k) ? sprintf("%.2f", wall[k]) : "-", ok(k) ? sprintf("%.2f", cpu[k]) : "-",
				ok(k) ? sprintf("%.1f", rss[k]) : "-", ok(k) ? sprintf("%.1f", repo[k]) : "-",
				growth[k] == "" ? "" : sprintf("%.2f", mib(growth[k])) growth_note(ds, tools[i]),
				allsteps[s] == "first" ? num(tput(ds, tools[i]), "%.1f") : "", verify[k]
		}
		if (!("umbra" in seentool) || ntools < 2) continue
		printf "\numbra ÷ peer (below 1: umbra is faster/smaller; MiB/s: above 1 is faster)\n"
		line = sprintf("  %-38s", "")
		for (i = 1; i <= ntools; i++) if (tools[i] != "umbra") line = line sprintf(" %8s", tools[i])
		print line
		for (r = 1; r <= nrows; r++) {
			line = sprintf("  %-38s", rowlabel[r])
			for (i = 1; i <= ntools; i++) if (tools[i] != "umbra")
				line = line sprintf(" %8s", ratio(val(ds, "umbra", rowwhat[r]), val(ds, tools[i], rowwhat[r])))
			print line
		}
		targets(ds)
		print "targets:"
		for (t = 1; t <= ntg; t++) printf "  %-4s  %s%s\n", tg_res[t], tg_text[t], tg_detail[t] == "" ? "" : " (" tg_detail[t] ")"
	}
}
