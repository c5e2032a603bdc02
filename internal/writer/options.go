package writer

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
)

// Password finds a writer's password without it ever being on a command
// line: the option "password" (allowed only in the configuration file),
// else the file named by "password_file" (first line), else the client's
// usual environment variable envName (PGPASSWORD, MYSQL_PWD, REDISCLI_AUTH).
// An empty result with a nil error means no password was given.
func Password(opts map[string]string, envName string) (string, error) {
	if p, ok := opts["password"]; ok {
		return p, nil
	}
	if f := opts["password_file"]; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("password_file: %w; give a readable file holding the password on its first line", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimRight(line, "\r"), nil
	}
	if envName != "" {
		return os.Getenv(envName), nil
	}
	return "", nil
}

// CheckOptions refuses an option not in valid, naming the valid ones:
// "<kind> writer "<name>": unknown option ...".
func CheckOptions(kind, name string, opts map[string]string, valid []string) error {
	valid = append(slices.Clone(valid), CommonOptions...)
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		if !slices.Contains(valid, k) {
			return fmt.Errorf("%s writer %q: unknown option %q; valid options: %s", kind, name, k, strings.Join(slices.Sorted(slices.Values(valid)), ", "))
		}
	}
	return nil
}
