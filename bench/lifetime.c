/* lifetime MS [TAG]: lives MS milliseconds, then exits 0. The tag only makes it matchable. */
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
	long ms = argc > 1 ? atol(argv[1]) : 10;
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&t, NULL);
	return 0;
}
