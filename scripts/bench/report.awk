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
	# Repetitions: a step that failed once counts as failed; each figure
	# is the median of its repetitions (finish).
	if (!(k in status) || ok(k)) status[k] = $col["status"]
	n = ++reps[k]
	W[k, n] = $col["wall_s"]
	C[k, n] = $col["user_s"] + $col["sys_s"]
	R[k, n] = $col["max_rss_kib"] / 1024
	P[k, n] = $col["repo_bytes"] / 1048576
	G[k, n] = $col["growth_bytes"]
	verify[k] = verify[k] == "" || verify[k] == "ok" ? $col["verify"] : verify[k]
	dbytes[ds] = $col["data_bytes"]; dfiles[ds] = $col["data_files"]
	if ($col["changed_bytes"] != "") { cbytes[ds] = $col["changed_bytes"]; cunits[ds] = $col["changed_units"] }
}

# median of A[k, 1..n], "" when none is set.
function median(A, k, n,   i, j, m, v, x) {
	m = 0
	for (i = 1; i <= n; i++) if (A[k, i] != "") v[++m] = A[k, i] + 0
	if (m == 0) return ""
	for (i = 2; i <= m; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
	return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}

function finish(   k, w, ds, tool) {
	for (k in reps) {
		wall[k] = median(W, k, reps[k]); cpu[k] = median(C, k, reps[k]); rss[k] = median(R, k, reps[k])
		repo[k] = median(P, k, reps[k]); growth[k] = median(G, k, reps[k])
		split(k, w, SUBSEP); ds = w[1]; tool = w[2]
		# Peak memory of the recurring steps; init runs once per repository.
		if (ok(k) && w[3] != "init" && (!((ds, tool) in peak) || rss[k] > peak[ds, tool])) peak[ds, tool] = rss[k]
	}
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
# best_peer: the best figure of the peers (umbra-fast is umbra, not a
# peer) for what (as val's), the lowest or with high set the highest; its
# tool in bestname.
function best_peer(ds, what, high,   i, t, v, best) {
	best = ""; bestname = ""
	for (i = 1; i <= ntools; i++) {
		t = tools[i]
		if (t ~ /^umbra/ || t == "ceiling") continue
		v = val(ds, t, what)
		if (v != "" && (best == "" || (high ? v > best : v < best))) { best = v; bestname = t }
	}
	return best
}
function target(ds, text, pass, detail) {
	ntg++
	tg_text[ntg] = text; tg_detail[ntg] = detail
	tg_res[ntg] = pass == "" ? "n/a" : (pass ? "PASS" : "FAIL")
}
# targets: issue 16's, against the best peer in the run.
function targets(ds,   u, f, r) {
	ntg = 0
	u = tput(ds, "umbra"); f = best_peer(ds, "mibps", 1)
	target(ds, "first backup at least 1.3x the fastest peer's throughput", u == "" || f == "" ? "" : u >= 1.3 * f,
		u == "" || f == "" ? "" : sprintf("%.2fx %s's", u / f, bestname))
	f = tput(ds, "ceiling")
	if (ds == "mixed") target(ds, "first backup at least 80% of the disk's cold-read ceiling", u == "" || f == "" ? "" : u >= 0.8 * f,
		u == "" || f == "" ? "" : sprintf("%.0f%%, %.0f of %.0f MiB/s", 100 * u / f, u, f))
	u = val(ds, "umbra", "unchanged:wall"); f = best_peer(ds, "unchanged:wall")
	target(ds, "unchanged backup no slower than the fastest peer", u == "" || f == "" ? "" : u <= f,
		u == "" || f == "" ? "" : sprintf("umbra %.2f s, %s %.2f s", u, bestname, f))
	u = val(ds, "umbra", "incremental:wall"); f = best_peer(ds, "incremental:wall")
	target(ds, "incremental no slower than the fastest peer", u == "" || f == "" ? "" : u <= f,
		u == "" || f == "" ? "" : sprintf("umbra %.2f s, %s %.2f s", u, bestname, f))
	u = val(ds, "umbra", "restore:wall"); f = best_peer(ds, "restore:wall")
	target(ds, "restore at least 1.3x as fast as the fastest peer", u == "" || f == "" ? "" : 1.3 * u <= f,
		u == "" || f == "" ? "" : sprintf("%.2fx %s's speed", f / u, bestname))
	u = val(ds, "umbra", "peak"); f = best_peer(ds, "peak")
	target(ds, "peak memory no higher than the lowest peer's", u == "" || f == "" ? "" : u <= f,
		u == "" || f == "" ? "" : sprintf("%.0f vs %s's %.0f MiB", u, bestname, f))
	u = val(ds, "umbra", "first:repo"); r = val(ds, "restic", "first:repo")
	target(ds, "repository no larger than restic's", u == "" || r == "" ? "" : u <= r,
		u == "" || r == "" ? "" : sprintf("%.1f vs %.1f MiB, %.2fx", u, r, u / r))
	if (ds != "mixed") {
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
	finish()
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
