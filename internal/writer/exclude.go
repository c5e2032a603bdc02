package writer

import (
	"path/filepath"
	"strings"
)

// Excluded reports whether path matches one of a component's Excludes.
// Patterns are absolute and use filepath.Match syntax per element, with one
// addition: "/**/" matches any number of directories, so
// /data/**/pgsql_tmp* matches /data/pgsql_tmp1 and /data/base/pgsql_tmp2.
// A directory that matches is excluded with everything below it.
func Excluded(patterns []string, path string) bool {
	for _, p := range patterns {
		if matches(p, path) {
			return true
		}
	}
	return false
}

func matches(pattern, path string) bool {
	prefix, rest, deep := strings.Cut(pattern, "/**/")
	if !deep {
		return matchOrParent(pattern, path)
	}
	below, ok := strings.CutPrefix(path, prefix+"/")
	if !ok {
		return false
	}
	// Try rest against every tail of what lies below prefix.
	parts := strings.Split(below, "/")
	for i := range parts {
		if matchOrParent(rest, strings.Join(parts[i:], "/")) {
			return true
		}
	}
	return false
}

// matchOrParent matches path, or one of its parent directories, against a
// pattern of the same depth.
func matchOrParent(pattern, path string) bool {
	depth := strings.Count(pattern, "/")
	parts := strings.Split(path, "/")
	if len(parts) <= depth {
		return false
	}
	ok, _ := filepath.Match(pattern, strings.Join(parts[:depth+1], "/"))
	return ok
}
