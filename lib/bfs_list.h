/*
 * Two-way lists threaded through their items (fields prev and next), the
 * head's prev NULL: insertion at the head, removal from anywhere.  Macros
 * so that each list keeps its own item type, checked by the compiler.
 */
#ifndef BUCKETFS_BFS_LIST_H
#define BUCKETFS_BFS_LIST_H

#include <stddef.h>

#define BFS_LIST_ADD(head, item)                                              \
	do {                                                                  \
		(item)->prev = NULL;                                          \
		(item)->next = (head);                                        \
		if ((head) != NULL) {                                         \
			(head)->prev = (item);                                \
		}                                                             \
		(head) = (item);                                              \
	} while (0)

#define BFS_LIST_REMOVE(head, item)                                           \
	do {                                                                  \
		if ((item)->prev != NULL) {                                   \
			(item)->prev->next = (item)->next;                    \
		} else if ((head) == (item)) {                                \
			(head) = (item)->next;                                \
		}                                                             \
		if ((item)->next != NULL) {                                   \
			(item)->next->prev = (item)->prev;                    \
		}                                                             \
		(item)->prev = (item)->next = NULL;                           \
	} while (0)

#endif
